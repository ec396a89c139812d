#!/usr/bin/env python3
"""Leave-one-out over the training workloads for the fits that were tried before choosing one.

A re-implementation of tperf's fit (crates/core/src/cost/calibration.rs at this folder's tree)
with switches for the alternatives. It reads the refit's file, whose samples carry each op's
variant, and for "no variants" ignores them. It reproduces tperf's own leave-one-out of the
tree before the change (19.8 / 53.8 / 18.8 / 32.4) and after (18.3 / 52.0 / 16.6 / 31.8) to the
printed digit. Only the training workloads are read: the held-out set played no part.

    python3 loo_alternatives.py h200-calibration.json [path/to/tperf]
"""
import collections, json, math, sys

DEFAULT = dict(variants=True, bias_forward=False, gemv=False, gap='global', gapform='ab',
               knot='median', below='parent', above='parent', maxk=6, minp=3)


def median(v):
    v = sorted(v); n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def quantile(v, p):
    v = sorted(v); pos = p * (len(v) - 1); lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def curve_fit(pairs, o):
    pts = sorted((math.log(r), math.log(m)) for r, m in pairs if r > 0 and m > 0)
    if not pts:
        return None
    bins = max(1, min(o['maxk'], len(pts) // o['minp']))
    knots, start = [], 0
    for b in range(bins):
        end = ((b + 1) * len(pts)) // bins
        if end <= start:
            continue
        while end < len(pts) and pts[end][0] == pts[end - 1][0]:
            end += 1
        ys = [p[1] for p in pts[start:end]]
        y = {'median': lambda: median(ys),
             'mean_time': lambda: math.log(sum(math.exp(v) for v in ys) / len(ys)),
             'mean_log': lambda: sum(ys) / len(ys)}[o['knot']]()
        knots.append((median([p[0] for p in pts[start:end]]), y, end - start))
        start = end
        if start >= len(pts):
            break
    pooled = []
    for k in knots:  # pool adjacent violators
        pooled.append(k)
        while len(pooled) >= 2 and pooled[-2][1] > pooled[-1][1]:
            a, b = pooled.pop(-2), pooled.pop()
            w = a[2] + b[2]
            pooled.append(((a[0] * a[2] + b[0] * b[2]) / w, (a[1] * a[2] + b[1] * b[2]) / w, w))
    return [(k[0], k[1]) for k in pooled]


def inside(k, x):
    first, last = k[0], k[-1]
    if x >= last[0]:
        return last[1] + (x - last[0])
    if x <= first[0]:
        return first[1] if len(k) >= 2 else first[1] + (x - first[0])
    for j in range(1, len(k)):
        if k[j][0] > x:
            a, b = k[j - 1], k[j]
            return a[1] + (b[1] - a[1]) * (x - a[0]) / (b[0] - a[0])


def within(k, parent, x, o):
    first, last = k[0], k[-1]
    if x < first[0] and o['below'] == 'flat' and len(k) >= 2:
        return first[1]
    if x < first[0] and o['below'] == 'flat_even_one_knot':
        return first[1]
    if parent is None or first[0] <= x <= last[0]:
        return inside(k, x)
    if x > last[0] and o['above'] == 'slope1':
        return last[1] + (x - last[0])
    edge = last if x > last[0] else first
    return edge[1] + inside(parent, x) - inside(parent, edge[0])


def variant(kind, o):
    if not o['variants']:
        return ''
    v = kind.get('variant', '')
    if o['bias_forward'] and kind.get('forward_bias'):
        v = '+'.join(w for w in ['bias', v] if w)
    if o['gemv'] and kind.get('gemv'):
        v = '+'.join(w for w in [v, 'gemv'] if w)
    return v


def chain(kind, o, fitting=False):
    v = variant(kind, o)
    names = [kind['name'] + '+' + v] if v else [kind['name']]
    if v and not fitting:
        names.append(kind['name'])
    out = []
    for nm in names:
        if kind.get('step'):
            out.append(('kind_bound_step', nm, kind['dtype'], kind['bound'], kind['step']))
        out.append(('kind_bound', nm, kind['dtype'], kind['bound'], ''))
        out.append(('kind', nm, kind['dtype'], '', ''))
    out.append(('class', kind['class'], kind['dtype'], '', ''))
    return out


def nnls(rows):
    def one(c):
        xx = sum(r[c] ** 2 for r in rows)
        return max(sum(r[c] * r[2] for r in rows) / xx, 0) if xx > 0 else 0
    saa = sum(r[0] * r[0] for r in rows); sab = sum(r[0] * r[1] for r in rows)
    sbb = sum(r[1] * r[1] for r in rows)
    say = sum(r[0] * r[2] for r in rows); sby = sum(r[1] * r[2] for r in rows)
    det = saa * sbb - sab * sab
    if abs(det) > 1e-12 * max(saa * sbb, 1e-300):
        a, b = (say * sbb - sby * sab) / det, (saa * sby - sab * say) / det
        if a >= 0 and b >= 0:
            return a, b
    a, b = one(0), one(1)
    sse = lambda a, b: sum((a * r[0] + b * r[1] - r[2]) ** 2 for r in rows)
    return (a, 0) if sse(a, 0) <= sse(0, b) else (0, b)


def step_kind(w):
    return 'decode' if ' decode ' in w['label'] else 'batch'


class Fit:
    def __init__(self, train, o):
        self.o = o
        pairs = collections.defaultdict(list)
        for w in train:
            for s in w['ops']:
                for g in chain(s['kind'], o, fitting=True):
                    pairs[g].append((s['roofline_seconds'], s['measured_seconds']))
        self.groups = {k: c for k, c in ((k, curve_fit(v, o)) for k, v in pairs.items()) if c}
        kinds = ['batch', 'decode'] if o['gap'] == 'per_step_kind' else ['']
        self.gap = {}
        for sk in kinds:
            ws = [w for w in train if sk in ('', step_kind(w))] or train
            self.gap[sk] = self.fit_gap(ws)

    def fit_gap(self, ws):
        rows = []
        for w in ws:
            n, t = len(w['ops']), w['step_seconds']
            s = sum(x['measured_seconds'] for x in w['ops'])
            rows.append((n / t, s / t, max((t - s) / t, 0)))
        if self.o['gapform'] == 'ab':
            return nnls(rows)
        if self.o['gapform'] == 'per_op':
            return (max(sum(r[0] * r[2] for r in rows) / sum(r[0] ** 2 for r in rows), 0), 0)
        per_op = [(w['step_seconds'] - sum(x['measured_seconds'] for x in w['ops'])) / len(w['ops'])
                  for w in ws]
        return (median(per_op), 0)

    def predict(self, kind, r):
        gs = chain(kind, self.o)
        cls = self.groups.get(gs[-1])
        x = math.log(max(r, 1e-15))
        for key in gs:
            if key in self.groups:
                return math.exp(within(self.groups[key], cls if key != gs[-1] else None, x, self.o))
        return r

    def step(self, w):
        s = sum(self.predict(x['kind'], x['roofline_seconds']) for x in w['ops'])
        a, b = self.gap.get(step_kind(w), self.gap.get(''))
        return s + a * len(w['ops']) + b * s


def leave_one_out(train, **kw):
    o = dict(DEFAULT); o.update(kw)
    op_err, step_err = [], []
    for i, w in enumerate(train):
        f = Fit(train[:i] + train[i + 1:], o)
        op_err += [abs(f.predict(x['kind'], x['roofline_seconds']) - x['measured_seconds'])
                   / x['measured_seconds'] for x in w['ops']]
        step_err.append(abs(f.step(w) - w['step_seconds']) / w['step_seconds'])
    return (quantile(op_err, .5), quantile(op_err, .9), quantile(step_err, .5),
            quantile(step_err, .9), sum(step_err) / len(step_err))


def main(path):
    train = json.load(open(path))['samples']['training']
    # Two alternatives need what the samples do not keep: whether a forward product has a
    # bias, and whether it has one or two rows (the CUDA backend's gemv). With a tperf binary
    # given, they come from its schedule of each label (`tperf model … --json`, joined by
    # position); without one those two are skipped.
    tperf = sys.argv[2] if len(sys.argv) > 2 else None
    if tperf:
        import re, subprocess
        for w in train:
            name, phase, b, t, dtype = re.match(r'(\S+) (\S+) B(\d+) T(\d+) (\S+)', w['label']).groups()
            rows = json.loads(subprocess.run(
                [tperf, 'model', name, '--phase', phase, '--batch', b, '--seq', t, '--dtype', dtype,
                 '--hw', 'h200', '--json'], capture_output=True, text=True, check=True).stdout)['ops']
            assert [r['name'] for r in rows] == [x['kind']['name'] for x in w['ops']], w['label']
            for x, r in zip(w['ops'], rows):
                m = re.search(r'\bm=(\d+)', r['dims'])
                forward = r['name'] in ('matmul', 'matmul_gelu')
                x['kind']['forward_bias'] = forward and ' bias' in ' ' + r['dims']
                x['kind']['gemv'] = forward and m is not None and int(m.group(1)) <= 2
    alternatives = [
        ('the fit before this change (no variants)', dict(variants=False)),
        ('variants bias (backward) + unaligned: chosen', {}),
        ('variants: unaligned only', dict(variants=True)),  # set below
        ('variants, and a forward bias too', dict(bias_forward=True)),
        ('variants + gemv (m <= 2)', dict(gemv=True)),
        ('variants, host gap fitted per step kind', dict(gap='per_step_kind')),
        ('variants, host gap a per op only', dict(gapform='per_op')),
        ('variants, host gap the median per op', dict(gapform='median_per_op')),
        ('variants, flat below the first knot', dict(below='flat')),
        ('variants, flat below, one-knot curves too', dict(below='flat_even_one_knot')),
        ('variants, slope 1 above the last knot', dict(above='slope1')),
        ('variants, knot y = ln mean time', dict(knot='mean_time')),
        ('variants, knot y = mean ln time', dict(knot='mean_log')),
    ] + [('variants, at most %d knots' % k, dict(maxk=k)) for k in (3, 4, 8, 12)]
    print('%-46s %8s %8s %9s %8s %9s' % ('leave-one-out over the training workloads', 'op med',
                                          'op p90', 'step med', 'step p90', 'step mean'))
    for name, kw in alternatives:
        if not tperf and ('bias_forward' in kw or 'gemv' in kw):
            continue
        t = train
        if name.startswith('variants: unaligned only'):
            t = json.loads(json.dumps(train))
            for w in t:
                for x in w['ops']:
                    x['kind']['variant'] = x['kind'].get('variant', '').replace('bias+', '').replace('bias', '')
        print('%-46s' % name + ''.join('%8.1f%% ' % (100 * v) for v in leave_one_out(t, **kw)))


if __name__ == '__main__':
    main(sys.argv[1])
