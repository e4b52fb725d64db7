// The benches' measure of what JavaScript costs: the CPU time of the process's main thread (the
// thread the application's JavaScript runs on), whatever the engine's worker and the provider take.
import { readFileSync } from 'node:fs';

/** CPU seconds this process's main thread has used (schedstat; else utime + stime of its stat, 10 ms ticks). */
export function mainThreadCpu(): number {
  try {
    // Nanoseconds on the CPU (schedstat), where the kernel keeps it.
    return Number(readFileSync(`/proc/self/task/${process.pid}/schedstat`, 'utf8').split(' ')[0]) / 1e9;
  } catch {
    const stat = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  }
}
