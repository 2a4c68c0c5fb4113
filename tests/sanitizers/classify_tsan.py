#!/usr/bin/python3
"""Classifies ThreadSanitizer reports by who made each of the two racing accesses.

For each report the first frame of each access stack that is not a libc/libstdc++/sanitizer
helper (memcpy, operator new, std::..., absl's Mutex) names its owner: grpc (libgrpc, libgpr,
grpc::, grpc_core::), protobuf, abseil, ours (pagepool::, or a source file of this repository),
or other. Prints the number of reports, the owner pairs, and the repository sites most often on
either side. Usage: classify_tsan.py TSAN_LOG...
"""
import collections
import re
import sys

HELPER = re.compile(r'(memcpy|memset|memmove|free|malloc|realloc|calloc|operator (new|delete)|'
                    r'__interceptor|__tsan|pthread_|std::|__gnu_cxx::|void std::|'
                    r'absl::debian3::(Mutex|CondVar))')
ACCESS = re.compile(r'\n  ((?:Previous )?(?:[Aa]tomic )?(?:[Rr]ead|[Ww]rite)[^\n]*:)\n'
                    r'((?:\s+#\d+[^\n]*\n)+)')


def owner(frames):
    for frame in frames:
        m = re.match(r'\s*#\d+ (.*)', frame)
        if not m:
            continue
        text = m.group(1)
        fn = text.split(' /')[0].split(' <null>')[0]
        if HELPER.match(fn):
            continue
        if ('libgrpc' in text or 'libgpr' in text or 'libupb' in text or 'grpc' in fn.lower()):
            return 'grpc', None
        if 'libprotobuf' in text or 'google::protobuf' in fn:
            return 'protobuf', None
        if 'libabsl' in text or fn.startswith('absl::'):
            return 'abseil', None
        site = re.search(r'/((?:base|dma|pool|server|client|tests)/[^ :]+:\d+)', text)
        if 'pagepool::' in fn or site:
            return 'ours', site.group(1) if site else fn[:80]
        return 'other', None
    return 'other', None


def main(paths):
    pairs = collections.Counter()
    sites = collections.Counter()
    total = 0
    for path in paths:
        with open(path, errors='replace') as f:
            text = f.read()
        for report in text.split('=================='):
            if 'WARNING: ThreadSanitizer' not in report:
                continue
            total += 1
            owners = [owner(m.group(2).splitlines()) for m in ACCESS.finditer(report)][:2]
            pairs[' / '.join(sorted(o for o, _ in owners))] += 1
            for o, site in owners:
                if o == 'ours':
                    sites[site] += 1
    print(f'{total} reports')
    print('accesses made by (first frame that is not a libc/libstdc++ helper):')
    for pair, n in pairs.most_common():
        print(f'  {n:6d}  {pair}')
    print('repository sites on a racing side:')
    for site, n in sites.most_common(15):
        print(f'  {n:6d}  {site}')


if __name__ == '__main__':
    main(sys.argv[1:])
