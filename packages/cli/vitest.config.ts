// Vitest settings: the workspace's shared ones (vitest.shared.ts).
import shared from '../../vitest.shared.js';

export default shared;
