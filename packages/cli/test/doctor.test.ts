// `trellis doctor`: what it reports about this machine (host, libfabric, ibverbs, CUDA, and a
// verdict per backend).
import { describe, expect, it } from 'vitest';
import { runDoctor } from '../src/doctor.js';

describe('trellis doctor', () => {
  it('reports the host, libfabric, ibverbs and CUDA, and a verdict per backend', async () => {
    const r = await runDoctor();
    const areas = new Set(r.checks.map((c) => c.area));
    expect([...areas].sort()).toEqual(['cuda', 'host', 'ibverbs', 'libfabric']);
    for (const c of r.checks) expect(['ok', 'missing', 'info']).toContain(c.status);
    const efa = r.verdicts.find((v) => v.backend === 'backend-efa')!;
    // Every machine this runs on has libfabric's shm and tcp: backend-efa is usable.
    expect(efa.usable).toBe(true);
    expect(r.checks.find((c) => c.item === 'shm')!.status).toBe('ok');
    expect(r.verdicts.map((v) => v.backend)).toEqual(['backend-efa', 'backend-verbs']);
    const verbs = r.verdicts[1]!;
    if (!verbs.usable) expect(verbs.verdict).toMatch(/software RC model works here/);
  });
});
