"""Generate the example ONNX model (an MLP 784-256-256-10) and publish it as a version.

    python examples/make_model.py /tmp/models/mlp            # publishes the next version
    python examples/make_model.py /tmp/models/mlp --seed 7   # different weights

No downloads: the weights are random numbers from a seeded generator.
"""

import argparse
import os
import tempfile

from hotserve.examples import make_mlp
from hotserve.repository.publish import publish


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_base_path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sizes", default="784,256,256,10", help="layer widths, comma-separated")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = make_mlp(os.path.join(tmp, "model.onnx"), [int(s) for s in args.sizes.split(",")], args.seed)
        version, path = publish(src, args.model_base_path)
    print(f"published version {version} at {path}")


if __name__ == "__main__":
    main()
