// Vitest settings: the workspace's shared ones (vitest.shared.ts), one file at a time: the pack,
// prebuild and release tests build into and pack the same package folders.
import { defineConfig, mergeConfig } from 'vitest/config';
import shared from '../../vitest.shared.js';

export default mergeConfig(shared, defineConfig({ test: { fileParallelism: false } }));
