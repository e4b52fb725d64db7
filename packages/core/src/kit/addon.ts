// Where a native package's addon comes from, and its install step. Every native Trellis package
// ships prebuilt binaries for linux-x64 and linux-arm64 (glibc) in `prebuilds/<platform>-<arch>/`
// (scripts/prebuild.sh builds them); a build from source goes to `build/Release/`. At run time the
// first of these that exists is loaded: `$TRELLIS_<NAME>_ADDON` (a file), `build/Release/<name>.node`, the prebuilt.
// At install time (`installNativeAddon`, the packages' `install` script) nothing is compiled when the
// prebuilt binary loads; otherwise the addon is built from source, and a failed build fails the
// install with what to install for this platform.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TrellisError } from '../errors.js';

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

interface AddonPackage {
  /** The package's name, e.g. `@trellis/backend-efa`. */
  name: string;
  root: string;
  spec: AddonInstallSpec;
}

/** The package.json of a native package at `root`: its name and its `trellisAddon`. */
function readAddonPackage(root: string): AddonPackage {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
    name: string;
    trellisAddon?: AddonInstallSpec;
  };
  if (!pkg.trellisAddon) throw new Error(`${root}/package.json has no trellisAddon`);
  return { name: pkg.name, root, spec: pkg.trellisAddon };
}

/** `TRELLIS_EFA_ADDON` for `trellis_efa`: the variable naming another build of an addon to load. */
function envOf(spec: AddonInstallSpec): string {
  return `${spec.name.toUpperCase()}_ADDON`;
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
 * The files `loadNativeAddon` tries, in order, for the addon of the package that holds module
 * `from` (named by its package.json's `trellisAddon`): `$TRELLIS_<NAME>_ADDON` alone when set, else
 * `build/Release/<name>.node` (a build from source), then `prebuilds/<platform>-<arch>/<name>.node`.
 * @internal
 */
export function addonCandidates(from: string): string[] {
  const { root, spec } = readAddonPackage(packageRootOf(from));
  const override = process.env[envOf(spec)];
  if (override) return [override];
  return [
    join(root, 'build', 'Release', `${spec.name}.node`),
    join(root, 'prebuilds', prebuildTag(), `${spec.name}.node`),
  ];
}

/** The addon file `loadNativeAddon` would load (undefined when none exists). @internal */
export function resolveNativeAddon(from: string): string | undefined {
  return addonCandidates(from).find((p) => existsSync(p));
}

function glibcVersion(): string | undefined {
  const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)
    ?.header;
  return header?.glibcVersionRuntime;
}

/**
 * Load the addon of the package that holds module `from` (see {@link addonCandidates}). When none
 * exists or it fails to load, the TrellisError (UNSUPPORTED) says what is missing and how to build
 * it, from the package's `trellisAddon.needs`. `exports`: functions the addon must have — a file
 * that lacks one (`$TRELLIS_<NAME>_ADDON` naming another package's addon, an older build) is
 * refused with UNSUPPORTED naming the file, rather than failing later with a TypeError. @internal
 */
export function loadNativeAddon<T>(from: string, exports: readonly string[] = []): T {
  const { name, spec } = readAddonPackage(packageRootOf(from));
  const candidates = addonCandidates(from);
  const file = candidates.find((p) => existsSync(p));
  if (!file) {
    const override = process.env[envOf(spec)];
    const why = override
      ? `${envOf(spec)}=${override} does not exist`
      : `no prebuilt binary for ${prebuildTag()}${glibcVersion() ? '' : ' (only glibc Linux has them)'} and no build from source: ` +
        `install ${spec.needs}, then \`npm rebuild ${name}\` (pnpm 10 runs no dependency build script until allowed: \`pnpm approve-builds\`, then \`pnpm rebuild ${name}\`)`;
    throw new TrellisError('UNSUPPORTED', `${name}: ${why} (looked for ${candidates.join(', ')})`);
  }
  let loaded: Record<string, unknown>;
  try {
    loaded = createRequire(from)(file) as Record<string, unknown>;
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    const hint = /GLIBC_|GLIBCXX_|CXXABI_/.test(msg)
      ? `${file} needs a newer C library than this system's (prebuilt binaries need glibc >= 2.34): ` +
        `build it here from source: install ${spec.needs}, then \`TRELLIS_BUILD_FROM_SOURCE=1 npm rebuild ${name}\``
      : 'the native addon failed to load';
    throw new TrellisError('UNSUPPORTED', `${name}: ${hint} (${msg})`, { cause: e });
  }
  const missing = exports.filter((k) => typeof loaded[k] !== 'function');
  if (missing.length) {
    const where = process.env[envOf(spec)] ? ` (${envOf(spec)} names it)` : '';
    throw new TrellisError(
      'UNSUPPORTED',
      `${name}: ${file}${where} is not this package's addon or is out of date: it lacks ${missing.join(', ')}; ` +
        `point ${envOf(spec)} at a build of ${name} (its build/Release/${spec.name}.node) or unset it, or rebuild: \`npm rebuild ${name}\``,
    );
  }
  return loaded as T;
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
  const { name, spec } = readAddonPackage(root);
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
          name,
          `the prebuilt binary for ${tag} does not load here (${(e as Error).message}); building from source`,
        );
      }
    } else {
      say(name, `no prebuilt binary for ${tag}; building from source`);
    }
  }
  const require = createRequire(join(root, 'package.json'));
  let cmakeJs: string;
  try {
    cmakeJs = require.resolve('cmake-js/bin/cmake-js');
  } catch {
    say(name, 'cmake-js is not installed, so the addon cannot be built from source');
    return 1;
  }
  const r = spawnSync(process.execPath, [cmakeJs, 'compile', '--CDCMAKE_BUILD_TYPE=Release', '-l', 'warn'], {
    cwd: root,
    stdio: 'inherit',
  });
  if (r.status === 0 && existsSync(join(root, 'build', 'Release', `${spec.name}.node`))) return 0;
  const prebuiltHere = existsSync(join(root, 'prebuilds', tag, `${spec.name}.node`));
  const lines = [
    '',
    fromSource && prebuiltHere
      ? `${name}: building the native addon from source failed (see above); TRELLIS_BUILD_FROM_SOURCE asked for it, so the prebuilt binary for ${tag} was not tried (it is still loaded at run time).`
      : `${name}: building the native addon from source failed (see above), and no prebuilt binary serves ${tag}.`,
    `  It needs ${spec.needs}.`,
    `  Debian/Ubuntu:          apt install ${spec.apt}`,
    `  RHEL/Fedora/Amazon Linux: dnf install ${spec.dnf}`,
    `  Then: npm rebuild ${name}   (pnpm: pnpm rebuild ${name})`,
    '',
  ];
  process.stderr.write(lines.join('\n'));
  return 1;
}
