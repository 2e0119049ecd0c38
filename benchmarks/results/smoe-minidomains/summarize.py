import json, sys, glob, os
rows = []
for d in sorted(glob.glob('/tmp/i20/runs/*')):
    p = os.path.join(d, 'scores', 'after_3.json')
    if not os.path.exists(p): continue
    s = json.load(open(p)); m = json.load(open(os.path.join(d, 'metrics.json')))
    for var, r in s['variants'].items():
        sets = r['sets']
        def g(t, e, k=None):
            x = sets.get(t, {}).get(e, {})
            return x.get('metrics', {}).get(k) if k else x.get('score')
        med = f"{g('Medicine','ScanVQA','closed_accuracy'):.1f}/{g('Medicine','ScanVQA','open_recall'):.1f}"
        line = f"| {os.path.basename(d)}{' ('+var+')' if var else ''} | {med} | {g('Chart','ChartQA'):.1f} | {g('Chart','Chart-to-Table'):.1f} | {g('Chart','Chart-to-Text'):.2f} | {g('Math','MWP&GPS'):.1f} | " + " | ".join(f"{c:.2f}" for c in r['cells']) + f" | {sum(r['cells'])/3:.2f} |"
        ds = (r.get('method_eval') or {}).get('dsal')
        if ds: line += f" DSAL inst {ds['accuracy_instance']} / (inst,layer) {ds['accuracy_instance_layer']} / layers {ds['accuracy_per_layer']} / active {ds['mean_active_experts']}"
        if r.get('locator'): line += f" conf {r['locator']['confusion']}"
        rows.append(line)
    if 'after_1.json':
        pass
    print(os.path.basename(d), 'trainable', m.get('trainable_params'), 'MFN', m.get('MFN'), 'BWT', m.get('BWT'))
print("| run | ScanVQA closed/open | ChartQA | Chart-to-Table | Chart-to-Text BLEU | MWP&GPS | Medicine | Chart | Math | mean |")
print("\n".join(rows))
