"""Channels-last against contiguous memory format: the seconds of one training step (SGD, fp32,
one thread) of nets from the quickstart and the CPU study's spaces, the best of 3 alternating
repeats of 20 steps each, in one process. Why ``train.channels_last`` is no study key: it is on
everywhere.

    OMP_NUM_THREADS=1 python benchmarks/channels_last.py
"""

import time, torch, pdenas
torch.set_num_threads(1)
def bench(arch, size, batch, channels_last, steps=20):
    torch.manual_seed(0)
    m = pdenas.build_model(arch)
    x = torch.randn(batch, arch.in_channels, size, size); y = torch.randint(0, 10, (batch,))
    if channels_last:
        m = m.to(memory_format=torch.channels_last); x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    def step():
        opt.zero_grad(); torch.nn.functional.cross_entropy(m(x), y).backward(); opt.step()
    for _ in range(3): step()
    t = time.perf_counter()
    for _ in range(steps): step()
    return (time.perf_counter() - t) / steps
cases = [
 ("quickstart parabolic 8-16-32-32 tv", pdenas.Architecture("parabolic", (8,16,32,32), (3,3,3), 0.3, in_channels=1, norm="tv"), 8, 64),
 ("quickstart resnet 16-32-64-64", pdenas.Architecture("resnet", (16,32,64,64), (2,2,2), 0.5, in_channels=1, norm="batch"), 8, 64),
 ("cpu_small resnet 16-32-64 s1", pdenas.Architecture("resnet", (16,32,64,64), (1,1,1), 0.5, in_channels=1, norm="batch"), 28, 128),
 ("cpu_small hamiltonian 32-64-128 tv", pdenas.Architecture("hamiltonian", (32,64,128,128), (2,2,2), 0.5, in_channels=1, norm="tv"), 28, 128),
]
for name, arch, size, batch in cases:
    a = []; b = []
    for r in range(3):
        a.append(bench(arch, size, batch, False)); b.append(bench(arch, size, batch, True))
    print(f"{name}: contiguous {min(a)*1e3:.1f} ms, channels_last {min(b)*1e3:.1f} ms, ratio cl/contig {min(b)/min(a):.2f}")
