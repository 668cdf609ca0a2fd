"""Carry the MiniLM text encoder to a machine that cannot install it (a lent GPU).

    python scripts/pack_minilm.py pack .carry/minilm           # here: ~22 MB from the installed package
    python scripts/pack_minilm.py unpack .carry/minilm /tmp/minilm   # there; then VIDEOMLA_MINILM=/tmp/minilm

The packed model encodes the world's training captions (tokens of every caption word kept, weights
in fp16) and refuses other prompts; see ``videomla_app/text_pack.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="pack the installed package's model into a folder")
    p.add_argument("out", type=Path)
    u = sub.add_parser("unpack", help="rebuild a model folder for VIDEOMLA_MINILM")
    u.add_argument("packed", type=Path)
    u.add_argument("out", type=Path)
    a = ap.parse_args(argv)
    from videomla_app import text_pack

    try:
        if a.cmd == "pack":
            from videomla_app.text_encoder import minilm_path

            f = text_pack.pack(minilm_path(), a.out)
            print(f"wrote {f} ({f.stat().st_size / 1e6:.1f} MB)")
        else:
            print(f"unpacked into {text_pack.unpack(a.packed, a.out)}: export VIDEOMLA_MINILM={a.out}")
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
