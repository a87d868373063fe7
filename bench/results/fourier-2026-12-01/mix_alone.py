# Usage: python mix_alone.py THREADS  (from the repository root): one C8 32->32 forward mix (8 planes -> 11 rows), fresh vs reused output
import time, torch, statistics, sys
from equifast.backends.fourier import group_conv as gc
torch.set_num_threads(int(sys.argv[1]))
B,n,C,H,W=8,8,32,32,32; R=11
s=torch.randn(B,n,C,H,W)
T=torch.randn(R,n)
planes=gc.stack_planes(s,False)
keep=torch.empty(R*B*C*H*W)
def run(fresh):
    buf=torch.empty(R*B*C*H*W) if fresh else keep
    outs=list(buf.view(R,B,-1).unbind(0))
    gc.mix(T,planes,outs)
    return buf
for mode in ["fresh","kept","fresh","kept"]:
    ts=[]
    for _ in range(30):
        t=time.perf_counter(); b=run(mode=="fresh"); ts.append(time.perf_counter()-t); del b
    print(sys.argv[1],"t",mode, f"{statistics.median(ts)*1e3:.2f} ms")
