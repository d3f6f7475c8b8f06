"""Write a float16 copy of the packaged all-MiniLM-L6-v2 (safetensors, config, tokenizer files; ~45 MB) to a
folder, small enough to carry to a GPU machine for compare_bert.py.

    python examples/make_minilm_fp16.py /tmp/minilm-fp16
    python examples/compare_bert.py /tmp/minilm-fp16 --device cuda --dtype float16
"""
import argparse
import os

import torch
import transformers
from transformers import AutoModel, AutoTokenizer

from compare_bert import packaged_minilm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir")
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    source = packaged_minilm()
    AutoModel.from_pretrained(source, dtype=torch.float16).save_pretrained(args.output_dir)
    AutoTokenizer.from_pretrained(source).save_pretrained(args.output_dir)
    for name in sorted(os.listdir(args.output_dir)):
        print(f"{os.path.getsize(os.path.join(args.output_dir, name)) / 2**20:8.2f} MiB  {name}")


if __name__ == "__main__":
    main()
