// The conformance cases every backend runs, by area (cases/*.ts), in one list. Their ids are the
// vitest titles and the names skip lists use.

import { BATCH_CASES } from './cases/batch.js';
import { INPUT_CASES } from './cases/input.js';
import { LIFECYCLE_CASES } from './cases/lifecycle.js';
import { MESSAGE_CASES } from './cases/messages.js';
import { OBSERVE_CASES } from './cases/observe.js';
import { PREPARED_CASES } from './cases/prepared.js';
import { REACTION_CASES } from './cases/reactions.js';
import type { ConformanceCase } from './cases/shared.js';
import { WRITE_CASES } from './cases/writes.js';

export type { CaseContext, ConformanceCase, EngineGroup, GroupFactory } from './cases/shared.js';

export const CASES: readonly ConformanceCase[] = [
  ...WRITE_CASES,
  ...BATCH_CASES,
  ...PREPARED_CASES,
  ...MESSAGE_CASES,
  ...INPUT_CASES,
  ...LIFECYCLE_CASES,
  ...OBSERVE_CASES,
  ...REACTION_CASES,
];

/** The id of a conformance case (its title). */
export type ConformanceCaseId = string;
