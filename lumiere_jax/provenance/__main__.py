"""`python -m lumiere_jax.provenance make-dev-cert DIR`: a local CA and signing certificate for trying
C2PA signing (trusted by no one else; see devcert.py)."""
from __future__ import annotations

import argparse
import sys

from lumiere_jax.provenance.devcert import make_dev_certificates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lumiere_jax.provenance", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make-dev-cert", help="write ca.pem, signer_key.pem and signer_chain.pem into DIR")
    make.add_argument("directory", metavar="DIR")
    args = parser.parse_args(argv)
    try:
        paths = make_dev_certificates(args.directory)
    except ImportError:
        print('make-dev-cert needs the cryptography package: pip install "lumiere_jax[c2pa]"', file=sys.stderr)
        return 2
    except FileExistsError as e:
        print(f"make-dev-cert: {e}", file=sys.stderr)
        return 2
    print(f"wrote {paths['anchor']}, {paths['key']} and {paths['chain']}: a development CA that no one else trusts.\n"
          f"Sign:   --config.provenance.signing_key={paths['key']} --config.provenance.certificate_chain={paths['chain']}\n"
          f"Verify: --mode=verify --config.verify.trust_anchors={paths['anchor']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
