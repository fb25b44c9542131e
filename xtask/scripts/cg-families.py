#!/usr/bin/env python3
"""Self instructions per request of two callgrind dumps, the marginal cost
(B - A) / (N_B - N_A), grouped by crate or function family (first matching
rule wins), then the top functions. Two runs over the same number of new
connections: their difference leaves out what each connection costs once
(accepting it, a relay's TLS handshake), so a proxy that pools its
connections and a relay that opens one per client connection compare fairly.

    cg-families.py DUMP_A N_A DUMP_B N_B [TOP]     (DUMP_A "-" and N_A 0: B alone)

Reads `callgrind_annotate --inclusive=no --tree=none --auto=no --threshold=100` (self
cost of every function). Used by xtask/scripts/floor-profile.sh.
"""
import re
import subprocess
import sys

# (family, pattern on the demangled function name or its object file).
RULES = [
    ("mesh-proxy: metrics", r"mesh_proxy::(metrics|telemetry)|prometheus|mesh_core::metrics"),
    ("mesh-proxy: policy/authz", r"mesh_policy::|mesh_proxy::.*(policy|authz|inbound::auth)"),
    ("mesh-proxy: routing/balancing", r"mesh_proxy::.*(route|router|balance|endpoint|outbound|resolve)"),
    ("mesh-proxy: headers", r"mesh_proxy::.*(header|hop_by_hop|forwarded|strip)"),
    ("mesh-proxy: tracing/logs", r"mesh_proxy::.*(trace|span|access_log)|tracing(_core|_subscriber)?::"),
    ("mesh-proxy: other", r"mesh_proxy::|mesh_core::|mesh_identity::"),
    ("hyper h1 parse/encode", r"hyper::proto::h1::(role|encode|decode)|httparse::"),
    ("hyper other (conn, dispatch, body)", r"hyper::|hyper_util::"),
    ("http crate (HeaderMap, Uri)", r"^http::|<http::"),
    ("rustls", r"rustls::|tokio_rustls::"),
    ("aws-lc (AES-GCM, crypto)", r"aws_lc|aws-lc|aes_hw_|aesni_|gcm_(gmult|ghash|init)|sha256_block|x25519"),
    ("tokio runtime/io", r"tokio::|mio::"),
    ("futures/tower", r"futures_|tower::|tower_"),
    ("bytes", r"bytes::"),
    ("malloc/free", r"malloc|free|realloc|calloc|_int_|tcache|arena|sysmalloc|__libc_alloc|mi_|je_"),
    ("memcpy/memmove/memset", r"mem(cpy|move|set|cmp)|__mem"),
    ("libc syscall wrappers", r"libc|__GI_|__libc_|syscall|writev|readv|recv|send|epoll|read$|write$"),
    ("kernel/vdso", r"vdso|clock_gettime"),
    ("core/alloc/std", r"core::|alloc::|std::|<alloc|<core|<std"),
]


def family(name):
    """The family of `file:function [object]`: the first rule matching the function, or the whole line."""
    fn = name.split(":", 1)[1] if ":" in name else name
    return next((f for f, p in RULES if re.search(p, fn) or re.search(p, name)), "other")


def read(path):
    """(total, {function: self instructions}) of one dump."""
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--tree=none", "--auto=no", "--threshold=100", path],
        capture_output=True, text=True, check=True).stdout
    total = None
    rows = []
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+(\([^)]*\)\s+)?PROGRAM TOTALS", line)
        if m:
            total = int(m.group(1).replace(",", ""))
            continue
        m = re.match(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(.*)$", line)
        if m and total is not None and ":" in m.group(2):
            rows.append((int(m.group(1).replace(",", "")), m.group(2)))
    if total is None:
        sys.exit(f"no PROGRAM TOTALS in callgrind_annotate {path}")
    funcs = {}
    for ir, name in rows:
        funcs[name] = funcs.get(name, 0) + ir
    return total, funcs


def main():
    (a, na, b, nb) = sys.argv[1], float(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    top = int(sys.argv[5]) if len(sys.argv) > 5 else 15
    (ta, fa), (tb, fb) = (0, {}) if a == "-" else read(a), read(b)
    n = nb - na
    total = tb - ta
    rows = [(fb.get(k, 0) - fa.get(k, 0), k) for k in set(fa) | set(fb)]
    fams = {}
    for ir, name in rows:
        fams[family(name)] = fams.get(family(name), 0) + ir
    print(f"total user instructions: {total / n:,.0f} per request")
    for fam, ir in sorted(fams.items(), key=lambda x: -x[1]):
        print(f"  {ir / n:>9,.0f}  {100 * ir / total:5.1f} %  {fam}")
    other = sorted((r for r in rows if family(r[1]) == "other"), reverse=True)
    print("  largest of other: " + "; ".join(f"{ir / n:,.0f} {name[:90]}" for ir, name in other[:5]))
    print(f"  top {top} functions (self):")
    for ir, name in sorted(rows, reverse=True)[:top]:
        print(f"  {ir / n:>9,.0f}  {name.split(':', 1)[-1][:150]}")


if __name__ == "__main__":
    main()
