# Usage: python mix_faults.py THREADS  (from the repository root): C8 32->32 forward+backward through the backend entry points, each of the five mixes timed with its minor page faults (getrusage), medians of six steps after five
import resource, time, torch, sys, statistics
from equifast.backends.fourier import group_conv as gc
from equifast._args import make_plan
torch.set_num_threads(int(sys.argv[1]))
orig = gc.mix
log = []
def mix(T, inputs, outputs, accumulate=False):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; t0 = time.perf_counter()
    orig(T, inputs, outputs, accumulate)
    log.append((T.shape, accumulate, (time.perf_counter()-t0)*1e3, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt-f0)*4/1024))
gc.mix = mix
B,n,C=8,8,32
s=torch.randn(B,n,C,32,32); w=torch.randn(C,n,C,3,3)/30; go=torch.randn(B,n,C,32,32)
plan=make_plan("C8",1,1,1,"view",3,3,"group_conv")
def step():
    out=gc.group_conv_forward(s,w,None,plan); gc.group_conv_backward(go,s,w,plan,(True,True,False)); del out
for _ in range(5): step()
log.clear()
R=6
f0=resource.getrusage(resource.RUSAGE_SELF).ru_minflt; t0=time.perf_counter()
for _ in range(R): step()
tot=(time.perf_counter()-t0)*1e3/R; ft=(resource.getrusage(resource.RUSAGE_SELF).ru_minflt-f0)*4/1024/R
names=["fwd rows","fwd out","bwd gY rows","bwd U rows","bwd grad_s"]
for i,nm in enumerate(names):
    xs=log[i::5]
    print(f"{nm:12s} {statistics.median([x[2] for x in xs]):.2f} ms  faulted {statistics.median([x[3] for x in xs]):.1f} MiB")
print(f"step {tot:.1f} ms, faulted {ft:.1f} MiB/step")
