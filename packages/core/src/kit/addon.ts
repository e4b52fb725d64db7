// Where a native package's addon comes from, and its install step. Every native Trellis package
// ships prebuilt binaries for linux-x64 and linux-arm64 (glibc) in `prebuilds/<platform>-<arch>/`
// (scripts/prebuild.sh builds them); a build from source goes to `build/Release/`. At run time the
// first of these that exists is loaded: `$<env>` (a file), `build/Release/<name>.node`, the prebuilt.
// At install time (`installNativeAddon`, the packages' `install` script) nothing is compiled when the
// prebuilt binary loads; otherwise the addon is built from source, and a failed build fails the
// install with what to install for this platform.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TrellisError } from '../errors.js';

/** A native package's addon: what `loadNativeAddon` and `installNativeAddon` look for. @internal */
export interface AddonSpec {
  /** The addon's file name without `.node`, e.g. `trellis_efa`. */
  name: string;
  /** An environment variable naming another build of it to load instead (tests, other libraries). */
  env?: string;
}

/** `linux-x64`, `linux-arm64`: the folder under `prebuilds/` for this process. @internal */
export function prebuildTag(platform: string = process.platform, arch: string = process.arch): string {
  return `${platform}-${arch}`;
}

function packageRootOf(from: string): string {
  // `from` is a module of the package's dist/ (or src/ under vitest): its package root holds package.json.
  let dir = dirname(fileURLToPath(from));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error(`no package.json above ${fileURLToPath(from)}`);
    dir = up;
  }
  return dir;
}

/**
 * The files `loadNativeAddon` tries for `spec`, in order, from the package that holds module `from`.
 * @internal
 */
export function addonCandidates(from: string, spec: AddonSpec): string[] {
  const root = packageRootOf(from);
  const out: string[] = [];
  const override = spec.env ? process.env[spec.env] : undefined;
  if (override) return [override];
  out.push(join(root, 'build', 'Release', `${spec.name}.node`));
  out.push(join(root, 'prebuilds', prebuildTag(), `${spec.name}.node`));
  return out;
}

/** The addon file `loadNativeAddon` would load for `spec` (undefined when none exists). @internal */
export function resolveNativeAddon(from: string, spec: AddonSpec): string | undefined {
  return addonCandidates(from, spec).find((p) => existsSync(p));
}

function glibcVersion(): string | undefined {
  const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)
    ?.header;
  return header?.glibcVersionRuntime;
}

/**
 * Load a backend's addon once: `spec` names it (see {@link AddonSpec}; a string is a path relative
 * to `from`, a module URL). When it fails, the TrellisError (UNSUPPORTED) says what is missing: the
 * first of `hints` whose pattern matches the loader's message, else how to build it. @internal
 */
export function loadNativeAddon<T>(
  from: string,
  spec: AddonSpec | string,
  backendName: string,
  hints: ReadonlyArray<readonly [RegExp, string]>,
  buildHint: string,
): T {
  const req = createRequire(from);
  if (typeof spec === 'string') {
    try {
      return req(spec) as T;
    } catch (e) {
      throw loadError(e, backendName, hints, buildHint);
    }
  }
  const candidates = addonCandidates(from, spec);
  const file = candidates.find((p) => existsSync(p));
  if (!file) {
    const override = spec.env && process.env[spec.env];
    const why = override
      ? `${spec.env}=${override} does not exist`
      : `no prebuilt binary for ${prebuildTag()}${glibcVersion() ? '' : ' (only glibc Linux has them)'} and no build from source: ` +
        `install ${buildHint}, then \`npm rebuild ${backendName}\` (pnpm 10 runs no dependency build script until allowed: \`pnpm approve-builds\`, then \`pnpm rebuild ${backendName}\`)`;
    throw new TrellisError('UNSUPPORTED', `${backendName}: ${why} (looked for ${candidates.join(', ')})`);
  }
  try {
    return req(file) as T;
  } catch (e) {
    throw loadError(e, backendName, hints, buildHint, file);
  }
}

function loadError(
  e: unknown,
  backendName: string,
  hints: ReadonlyArray<readonly [RegExp, string]>,
  buildHint: string,
  file?: string,
): TrellisError {
  const msg = e instanceof Error ? e.message : String(e);
  const hint =
    hints.find(([re]) => re.test(msg))?.[1] ??
    (/GLIBC_|GLIBCXX_|CXXABI_/.test(msg)
      ? `${file ?? 'the addon'} needs a newer C library than this system's (prebuilt binaries need glibc >= 2.34): ` +
        `build it here from source: install ${buildHint}, then \`TRELLIS_BUILD_FROM_SOURCE=1 npm rebuild ${backendName}\``
      : /Cannot find module|no such file/i.test(msg)
        ? `the native addon was not built: install ${buildHint}, then \`npm rebuild ${backendName}\``
        : 'the native addon failed to load');
  return new TrellisError('UNSUPPORTED', `${backendName}: ${hint} (${msg})`, { cause: e });
}

/** What a native package declares in its package.json under `trellisAddon`. @internal */
export interface AddonInstallSpec {
  /** The addon's file name without `.node`. */
  name: string;
  /** What a build from source needs, in words. */
  needs: string;
  /** Debian/Ubuntu packages a build from source needs. */
  apt: string;
  /** RHEL/Fedora/Amazon Linux packages a build from source needs. */
  dnf: string;
}

function say(pkg: string, text: string): void {
  process.stderr.write(`${pkg}: ${text}\n`);
}

/**
 * The install step of a native package, run in its folder (`npm`'s and `pnpm`'s `install` script):
 * keep the prebuilt binary for this platform when it loads; otherwise build from source with
 * cmake-js, and when that fails, exit non-zero with what to install. `TRELLIS_BUILD_FROM_SOURCE=1`
 * (or `npm install --build-from-source`) builds from source even where a prebuilt binary exists.
 * Returns the process exit code. @internal
 */
export function installNativeAddon(root: string = process.cwd()): number {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
    name: string;
    trellisAddon?: AddonInstallSpec;
  };
  const spec = pkg.trellisAddon;
  if (!spec) throw new Error(`${root}/package.json has no trellisAddon`);
  const fromSource =
    /^(1|true)$/i.test(process.env.TRELLIS_BUILD_FROM_SOURCE ?? '') ||
    /^(true|@?trellis)/i.test(process.env.npm_config_build_from_source ?? '');
  const tag = prebuildTag();
  if (!fromSource) {
    const prebuilt = join(root, 'prebuilds', tag, `${spec.name}.node`);
    if (existsSync(prebuilt)) {
      try {
        process.dlopen({ exports: {} }, prebuilt);
        return 0;
      } catch (e) {
        say(
          pkg.name,
          `the prebuilt binary for ${tag} does not load here (${(e as Error).message}); building from source`,
        );
      }
    } else {
      say(pkg.name, `no prebuilt binary for ${tag}; building from source`);
    }
  }
  const require = createRequire(join(root, 'package.json'));
  let cmakeJs: string;
  try {
    cmakeJs = require.resolve('cmake-js/bin/cmake-js');
  } catch {
    say(pkg.name, 'cmake-js is not installed, so the addon cannot be built from source');
    return 1;
  }
  const r = spawnSync(process.execPath, [cmakeJs, 'compile', '--CDCMAKE_BUILD_TYPE=Release', '-l', 'warn'], {
    cwd: root,
    stdio: 'inherit',
  });
  if (r.status === 0 && existsSync(join(root, 'build', 'Release', `${spec.name}.node`))) return 0;
  const lines = [
    '',
    `${pkg.name}: building the native addon from source failed (see above), and no prebuilt binary serves ${tag}.`,
    `  It needs ${spec.needs}.`,
    `  Debian/Ubuntu:          apt install ${spec.apt}`,
    `  RHEL/Fedora/Amazon Linux: dnf install ${spec.dnf}`,
    `  Then: npm rebuild ${pkg.name}   (pnpm: pnpm rebuild ${pkg.name})`,
    '',
  ];
  process.stderr.write(lines.join('\n'));
  return 1;
}
