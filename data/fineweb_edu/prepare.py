"""
FineWeb-Edu (HuggingFaceFW/fineweb-edu), by default its 10B-token sample "sample-10BT", the data of
nanochat and of build-nanogpt's GPT-2 reproduction: GPT-2 BPE tokens into train.bin and val.bin
here, through data/openwebtext/prepare.py, which takes the same flags.

$ python data/fineweb_edu/prepare.py                                      # ~27 GB from the Hub, ~10B tokens
$ python data/fineweb_edu/prepare.py --data_files='fineweb-edu/*.parquet'  # files already at hand
$ python data/fineweb_edu/prepare.py --dataset=HuggingFaceFW/fineweb --out_dir=data/fineweb  # the speedruns' FineWeb
"""
import os
import runpy
import sys

here = os.path.dirname(os.path.abspath(__file__))
# these defaults go first, so that the same flags given on the command line come later and win
sys.argv[1:1] = ['--dataset=HuggingFaceFW/fineweb-edu', '--name=sample-10BT', f'--out_dir={here}']
runpy.run_path(os.path.join(os.path.dirname(here), 'openwebtext', 'prepare.py'), run_name='__main__')
