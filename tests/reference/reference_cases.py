"""What the model reference generators (make_wan_reference.py, make_vae_reference.py) share: the
command line, the loop over their cases and the malformed checkpoint written beside them."""
import os
import sys

import torch
from safetensors.torch import save_file


def run(doc, cases, write_case, malformed, what, threads=None):
    """`script OUT_DIR`: write_case(out_dir, name, spec, first) for each case (returning the
    case's state dict), then malformed(first case's state) into OUT_DIR/malformed/bad.safetensors."""
    if len(sys.argv) != 2:
        sys.exit(doc)
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    if threads:
        torch.set_num_threads(threads)
    first_state = None
    for i, (name, spec) in enumerate(cases.items()):
        state = write_case(out_dir, name, spec, first=(i == 0))
        first_state = first_state or state
    folder = os.path.join(out_dir, "malformed")
    os.makedirs(folder, exist_ok=True)
    save_file(malformed(first_state), os.path.join(folder, "bad.safetensors"))
    print("wrote %s reference cases %s to %s" % (what, ", ".join(cases), out_dir))
