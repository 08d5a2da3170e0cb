"""
Start train.py for labfleet. FROZEN.

labfleet puts a one-time key in LABFLEET_SIGNING_KEY. This launcher removes it from
the environment before any editable code runs and hands it to prepare.py, whose
print_summary() signs the val_bpb line with it. So the metric line is written and
signed only by frozen code; printing a better number from train.py is detected.

    python launch.py train.py
"""

import os
import runpy
import sys

key = os.environ.pop("LABFLEET_SIGNING_KEY", None)
if len(sys.argv) < 2:
    sys.exit("usage: python launch.py train.py")
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[1])))
import prepare  # noqa: E402

prepare._set_signing_key(key)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
