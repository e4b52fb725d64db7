// `node -e "import('@trellis/core/install')"`: the install script of every native Trellis package,
// run by npm and pnpm in that package's folder (see installNativeAddon).
import { installNativeAddon } from './addon.js';

process.exitCode = installNativeAddon();
