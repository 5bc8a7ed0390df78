#!/usr/bin/python3
"""Where a load's CPU time goes: a whole-system profile of a netloader-bench run, per row.

Runs the given netloader-bench command under `perf record -a` (software clock: these VMs have no
hardware counters) while a thread notes each benchmark child's role from /proc. Then, for every
transfer, it takes the receiving process's busy stretch (its socket-copy samples, split at gaps
of 50 ms), counts what the receiver, its sender and the rest of the machine did within it, and
prints one table: milliseconds of CPU per transfer by category, and how busy each side was.
On two cores where both are busy throughout, a row's speed against raw MPI is close to raw MPI's
CPU per transfer over the row's ("predicted"), next to the windows' own ratio ("measured").

Meant for `--focus` runs (one transfer at a time). Needs perf (Debian's linux-perf, not
installed by scripts/install-deps.sh) and root, or kernel.perf_event_paranoid <= 0. Example:

  scripts/profile-bench.py -- build/bin/netloader-bench --focus --reps 3 --checkpoint /tmp/llama1g
"""

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading

CATEGORIES = ['socket copy', 'other kernel', 'XXH3', 'memcpy', 'MPI, UCX, progress', 'other user',
              'page zeroing']


def category(sym, dso):
    if sym in ('rep_movs_alternative', '_copy_to_iter', '_copy_from_iter') or 'copy_user' in sym:
        return 'socket copy'  # the kernel's copies between user memory and socket buffers
    if re.search(r'clear_page|clear_huge|folio_zero', sym):
        return 'page zeroing'
    # Debian's libxxhash has no symbols for its dispatched AVX2/AVX-512 variants.
    if sym.startswith('XXH') or (sym == '[unknown]' and 'xxhash' in dso):
        return 'XXH3'
    if re.search(r'mem(move|cpy)', sym) and 'kernel' not in dso:
        return 'memcpy'
    if 'ProgressEngine' in sym or re.search(r'libuc[spt]|mca_|libmpi|libopen-pal', dso):
        return 'MPI, UCX, progress'
    return 'other kernel' if 'kernel' in dso else 'other user'


def row_of(args):
    role = re.search(r'--role (\S+)', args).group(1)
    if role != 'load':
        return role
    if '--no-verify' in args:
        return 'checksums off'
    if '--direct' in args:
        return 'received in place'
    if '--preinit' in args:
        return 'MPI started beforehand'
    return 'MPI started while allocating' if '--overlap' in args else 'end to end'


def watch_roles(roles, stop):
    """pid -> command line of every process started with --role, read from /proc (no forks)."""
    while not stop.wait(0.1):
        for pid in os.listdir('/proc'):
            if not pid.isdigit() or int(pid) in roles:
                continue
            try:
                with open(f'/proc/{pid}/cmdline', 'rb') as f:
                    args = f.read().replace(b'\0', b' ').decode(errors='replace')
            except OSError:
                continue
            if '--role ' in args:
                roles[int(pid)] = args


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--freq', type=int, default=999, help='samples per second per core')
    parser.add_argument('--keep', help='keep perf.data and the roles in this directory')
    parser.add_argument('bench', nargs=argparse.REMAINDER, help='-- then the netloader-bench command')
    o = parser.parse_args()
    bench = o.bench[1:] if o.bench[:1] == ['--'] else o.bench
    if not bench:
        parser.error('give the netloader-bench command after --')
    if '--focus' not in bench:
        sys.exit('give netloader-bench --focus: in its other rows several loads run at once, and '
                 'their samples cannot be told apart')
    if shutil.which('perf') is None:
        sys.exit('perf is not installed: apt-get install linux-perf')
    workdir = o.keep or tempfile.mkdtemp(prefix='netloader-profile-')
    os.makedirs(workdir, exist_ok=True)
    data = os.path.join(workdir, 'perf.data')

    roles, stop = {}, threading.Event()
    watcher = threading.Thread(target=watch_roles, args=(roles, stop), daemon=True)
    watcher.start()
    run = subprocess.run(['perf', 'record', '-q', '-a', '-F', str(o.freq), '-e', 'cpu-clock',
                          '-o', data, '--'] + bench)
    stop.set()
    watcher.join()
    if run.returncode != 0:
        sys.exit(f'the benchmark under perf exited with {run.returncode}')
    with open(os.path.join(workdir, 'roles.txt'), 'w') as f:
        for pid, args in sorted(roles.items()):
            f.write(f'{pid} {args}\n')

    script = subprocess.run(['perf', 'script', '-i', data, '-F', 'pid,time,ip,sym,dso'],
                            capture_output=True, text=True, check=True).stdout
    samples = []  # (time, pid, category)
    for line in script.splitlines():
        m = re.match(r'\s*(\d+)\s+([\d.]+):\s+[0-9a-f]+\s+(\S+)\s+\((.*)\)', line)
        if m:
            samples.append((float(m.group(2)), int(m.group(1)), category(m.group(3), m.group(4))))
    samples.sort()
    by_pid = collections.defaultdict(list)
    for s in samples:
        by_pid[s[1]].append(s)

    rows = {pid: row_of(args) for pid, args in roles.items()}
    servers = [pid for pid, row in rows.items() if row == 'serve']
    raw_senders = [pid for pid, row in rows.items() if row == 'raw-send']
    ms_per_sample = 1000.0 / o.freq
    counts = collections.defaultdict(collections.Counter)  # (row, side) -> category -> samples
    transfers, window_ms = collections.Counter(), collections.Counter()
    for pid, row in rows.items():
        if row in ('serve', 'raw-send', 'disk') or row.startswith('storage'):
            continue
        copies = [t for t, _, c in by_pid[pid] if c == 'socket copy']
        if len(copies) < 20:
            continue
        stretches = [[copies[0]]]
        for t in copies[1:]:
            if t - stretches[-1][-1] > 0.05:
                stretches.append([])
            stretches[-1].append(t)
        busiest = max(stretches, key=len)
        t0, t1 = busiest[0], busiest[-1]
        inside = [s for s in samples if t0 <= s[0] <= t1]
        row = 'raw MPI' if row == 'raw-recv' else row
        candidates = servers if row != 'raw MPI' else raw_senders
        busy = collections.Counter(p for _, p, _ in inside)
        sender = max(candidates, key=lambda p: busy[p]) if candidates else None
        transfers[row] += 1
        window_ms[row] += (t1 - t0) * 1000
        for _, p, c in inside:
            side = 'receiver' if p == pid else 'sender' if p == sender else \
                'idle' if p == 0 else 'other processes'
            counts[(row, side)][c] += 1

    if not transfers:
        sys.exit('no transfer was long enough to profile (20 socket-copy samples at least): '
                 'use a larger model than --quick')
    order = ['raw MPI', 'MPI started beforehand', 'checksums off', 'received in place',
             'MPI started while allocating', 'end to end']
    print(f'\nCPU per transfer, ms (perf cpu-clock at {o.freq} Hz on every core; a transfer is '
          'the receiver\'s busy stretch)')
    print('%-29s %-9s' % ('row', 'side') + ''.join('%14s' % c[:13] for c in CATEGORIES) +
          '%8s%7s' % ('total', 'busy'))
    raw_total = raw_window = None
    for row in [r for r in order if transfers[r]]:
        k = transfers[row]
        window = window_ms[row] / k
        total = 0.0
        for side in ('sender', 'receiver'):
            c = counts[(row, side)]
            ms = sum(c.values()) * ms_per_sample / k
            total += ms
            print('%-29s %-9s' % (row if side == 'sender' else '', side) +
                  ''.join('%14.0f' % (c[x] * ms_per_sample / k) for x in CATEGORIES) +
                  '%8.0f%6.0f%%' % (ms, 100 * ms / window))
        idle = sum(counts[(row, 'idle')].values()) * ms_per_sample / k
        others = sum(counts[(row, 'other processes')].values()) * ms_per_sample / k
        line = (f'{"":29} {k} transfers of {window:.0f} ms; both sides {total:.0f} ms of CPU; '
                f'idle {idle:.0f} ms, other processes {others:.0f} ms')
        if row == 'raw MPI':
            raw_total, raw_window = total, window
        elif raw_total:
            line += (f'; vs raw MPI: predicted {100 * raw_total / total:.0f} %, '
                     f'measured {100 * raw_window / window:.0f} %')
        print(line)
    if o.keep is None:
        os.remove(data)


if __name__ == '__main__':
    main()
