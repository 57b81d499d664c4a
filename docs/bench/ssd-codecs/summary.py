import json,statistics as st,os,sys
labels=os.environ.get('LABELS','old none fp8').split(); R=int(os.environ.get('ROUNDS','3'))
rows={}
for c in labels:
    for r in range(1,R+1):
        j=json.load(open(f'/tmp/cb/{c}.{r}.json'))
        for w in j['rows']:
            rows.setdefault((w['size'],w['depth']),{}).setdefault(c,[]).append(w)
print('| size | depth | '+' | '.join(f'{c} GB/s' for c in labels)+' | fio GB/s | '+' | '.join(f'{c}/fio' for c in labels)+' | host hits |')
print('|'+'---|'*(3+2*len(labels)+1))
def f(l): return '%.2f [%.2f–%.2f]'%(st.median(l),min(l),max(l))
for k in sorted(rows):
    cells=[f([w['kvdrive_gbps'] for w in rows[k][c]]) for c in labels]
    fio=[w['fio_gbps'] for c in labels for w in rows[k][c]]
    rat=[f([w['kvdrive_gbps']/w['fio_gbps'] for w in rows[k][c]]) for c in labels]
    hits=sum(w['host_hits'] for c in labels for w in rows[k][c])
    print(f"| {k[0]//1024}K | {k[1]} | "+' | '.join(cells)+f" | {f(fio)} | "+' | '.join(rat)+f" | {hits} |")
