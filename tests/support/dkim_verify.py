#!/usr/bin/env python3
"""Verifies the DKIM signature of a message with dkimpy, an independent implementation.

usage: dkim_verify.py MESSAGE_FILE DNS_RECORD_FILE

The DNS lookup is stubbed: every TXT query for `<selector>._domainkey.<domain>` answers with
the record in DNS_RECORD_FILE (e.g. `v=DKIM1; k=rsa; p=MIIB…`). Exit status: 0 verified,
1 not verified (dkimpy's log is printed), 3 dkimpy (or PyNaCl, for Ed25519) is not installed.
"""
import logging
import sys

try:
    import dkim
except ImportError:
    print("dkimpy is not installed", file=sys.stderr)
    sys.exit(3)


def main() -> int:
    message_file, record_file = sys.argv[1], sys.argv[2]
    with open(message_file, "rb") as f:
        message = f.read()
    with open(record_file, "rb") as f:
        record = f.read().strip()
    queried = []

    def dnsfunc(name, timeout=5):
        queried.append(name)
        return record

    log = logging.getLogger("dkim")
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG)
    try:
        ok = dkim.verify(message, logger=log, dnsfunc=dnsfunc)
    except ImportError as err:  # Ed25519 needs PyNaCl
        print(f"missing verifier dependency: {err}", file=sys.stderr)
        return 3
    print(f"queried: {[q.decode() if isinstance(q, bytes) else q for q in queried]}")
    print("verified" if ok else "NOT verified")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
