// `trellis doctor`: what this host has and lacks for each backend, ending in a verdict per backend.
import { existsSync, readFileSync } from 'node:fs';
import { release } from 'node:os';

/** One finding. */
export interface Check {
  area: string;
  item: string;
  /** `ok`, `missing` (a capability this host lacks), `info`. */
  status: 'ok' | 'missing' | 'info';
  detail: string;
}

/** The doctor's report. */
export interface DoctorReport {
  checks: Check[];
  verdicts: Array<{ backend: string; usable: boolean; verdict: string }>;
}

async function load<T>(name: string): Promise<T | string> {
  try {
    return (await import(name)) as T;
  } catch (e) {
    return `${name} is not installed or did not load (${e instanceof Error ? e.message.split('\n')[0] : String(e)})`;
  }
}

function kernelAtLeast(major: number, minor: number): boolean {
  const m = /^(\d+)\.(\d+)/.exec(release());
  return !!m && (Number(m[1]) > major || (Number(m[1]) === major && Number(m[2]) >= minor));
}

/** `Max locked memory` of /proc/self/limits: `soft 8 MiB, hard 8 MiB` (or `unlimited`). */
function memlock(): string {
  try {
    const line = readFileSync('/proc/self/limits', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('Max locked memory'));
    const [soft, hard] = line?.replace(/^Max locked memory\s+/, '').split(/\s+/) ?? [];
    if (!soft || !hard) return 'unknown';
    const show = (v: string) =>
      /^\d+$/.test(v) ? `${v} bytes${Number(v) >= 2 ** 20 ? ` (${Number(v) / 2 ** 20} MiB)` : ''}` : v;
    return `soft ${show(soft)}, hard ${show(hard)}`;
  } catch {
    return 'unknown';
  }
}

/** Inspect this host. Never throws: what cannot be checked is reported as such. */
export async function runDoctor(): Promise<DoctorReport> {
  const checks: Check[] = [];
  const verdicts: DoctorReport['verdicts'] = [];
  const add = (area: string, item: string, status: Check['status'], detail: string) =>
    checks.push({ area, item, status, detail });

  add(
    'host',
    'kernel',
    kernelAtLeast(5, 12) ? 'ok' : 'missing',
    `${release()} (dmabuf GPU registration needs >= 5.12)`,
  );
  const lock = memlock();
  add(
    'host',
    'memlock limit',
    /unlimited/.test(lock) ? 'ok' : 'info',
    `${lock} (registration pins memory; RDMA wants unlimited)`,
  );

  // libfabric / backend-efa
  type Efa = typeof import('@trellis/backend-efa');
  const efa = await load<Efa>('@trellis/backend-efa');
  if (typeof efa === 'string') {
    add('libfabric', 'backend-efa', 'missing', efa);
    verdicts.push({ backend: 'backend-efa', usable: false, verdict: efa });
  } else {
    const addonFile = efa.nativeAddonPath();
    add(
      'libfabric',
      'addon',
      addonFile ? 'ok' : 'missing',
      addonFile ?? 'no prebuilt binary and no build from source',
    );
    let version: string | undefined;
    let why = '';
    try {
      version = `${efa.fabricVersion()} (${efa.fabricLibrary()})`;
    } catch (e) {
      why = e instanceof Error ? e.message : String(e);
    }
    if (version === undefined) {
      add('libfabric', 'library', 'missing', why);
      verdicts.push({ backend: 'backend-efa', usable: false, verdict: why });
    } else {
      add('libfabric', 'version', 'ok', version);
      const probes = efa.probeProviders();
      for (const p of probes)
        add(
          'libfabric',
          p.provider,
          p.error ? 'missing' : 'ok',
          p.error
            ? p.error
            : `rma ${p.rma}, remote CQ data ${p.remoteCqData}, FI_HMEM for CUDA ${p.hmem}${p.domain ? `, domain ${p.domain}` : ''}`,
        );
      const ok = (n: string) => probes.some((p) => p.provider === n && !p.error && p.rma && p.remoteCqData);
      const local = ['shm', 'tcp;ofi_rxm'].filter(ok);
      verdicts.push({
        backend: 'backend-efa',
        usable: ok('efa') || local.length > 0,
        verdict: ok('efa')
          ? 'ready on EFA'
          : local.length
            ? `no EFA here; usable between processes with ${local.join(' and ')} (tcp reaches other hosts)`
            : 'no usable provider',
      });
    }
  }

  // ibverbs / backend-verbs
  type Verbs = typeof import('@trellis/backend-verbs');
  const verbs = await load<Verbs>('@trellis/backend-verbs');
  if (typeof verbs === 'string') {
    add('ibverbs', 'backend-verbs', 'missing', verbs);
    verdicts.push({ backend: 'backend-verbs', usable: false, verdict: verbs });
  } else {
    const d = verbs.listDevices(false);
    add(
      'ibverbs',
      'devices',
      d.devices.length ? 'ok' : 'missing',
      d.devices.length ? d.devices.join(', ') : d.error,
    );
    // Each device's port as an engine would use it: link, GID or LID, MTU.
    for (const name of d.devices) {
      try {
        const e = await verbs.createEngine({ devices: [name], handshakeHost: '127.0.0.1' });
        add('ibverbs', name, 'ok', e.stats().nics[0]?.device ?? '');
        await e.close();
      } catch (err) {
        add('ibverbs', name, 'missing', err instanceof Error ? err.message : String(err));
      }
    }
    verdicts.push({
      backend: 'backend-verbs',
      usable: d.devices.length > 0,
      verdict: d.devices.length
        ? `devices ${d.devices.join(', ')} (untested on hardware so far; see its README)`
        : `no RDMA device; the software RC model works here (createEngine({ model: true }))`,
    });
  }

  // CUDA
  type Cuda = typeof import('@trellis/cuda');
  const cuda = await load<Cuda>('@trellis/cuda');
  if (typeof cuda === 'string') add('cuda', '@trellis/cuda', 'missing', cuda);
  else {
    const i = cuda.cudaInfo();
    add(
      'cuda',
      'runtime',
      i.built ? 'ok' : 'missing',
      i.built ? `runtime ${i.runtimeVersion}, driver ${i.driverVersion || 'none'}` : i.error,
    );
    if (i.error && i.built) add('cuda', 'GPUs', 'missing', i.error);
    for (const g of i.devices)
      add(
        'cuda',
        `GPU ${g.index}`,
        'ok',
        `${g.name} ${g.pciBusId}, sm_${g.computeCapability.replace('.', '')}, GPUDirect RDMA ${g.gpuDirectRdma}, peers [${g.peerAccess.join(', ')}]`,
      );
    if (typeof verbs !== 'string')
      for (const g of i.devices) {
        const near = verbs.devicesNearGpu(g.index);
        if (near.length) add('cuda', `NICs near GPU ${g.index}`, 'info', near.join(', '));
      }
  }
  const gdr = existsSync('/dev/gdrdrv');
  add(
    'cuda',
    'GDRCopy',
    gdr ? 'ok' : 'missing',
    gdr ? '/dev/gdrdrv present' : 'no /dev/gdrdrv (gdrdrv module not loaded)',
  );
  return { checks, verdicts };
}
