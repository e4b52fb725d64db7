// Immediate counting, part of the contract: how a write is sharded across NICs (autoShards,
// shardRanges) and how many immediates a request raises (countImms), so both sides agree.
import { TrellisError } from './errors.js';
import type { ScatterRouting } from './types.js';

/**
 * Smallest shard an automatically sharded write is cut into. Part of the contract: senders and
 * receivers derive the same shard count from it, so changing it is a breaking change.
 */
export const MIN_SHARD_BYTES = 16 * 1024;

/** Shard boundaries are multiples of this (cache line), except the end of the last shard. */
export const SHARD_ALIGN = 64;

/** NIC pairs used between two engines: NIC i talks to the peer's NIC i. */
export function lanesBetween(localNics: number, peerNics: number): number {
  return Math.min(localNics, peerNics);
}

/** Shards of an automatically sharded write: one per `MIN_SHARD_BYTES`, at most one per lane, at least one. */
export function autoShards(length: number, lanes: number): number {
  return Math.max(1, Math.min(lanes, Math.floor(length / MIN_SHARD_BYTES)));
}

/**
 * Cut `[0, length)` into `shards` contiguous pieces aligned to {@link SHARD_ALIGN}. Pieces may be
 * empty when `length` is small and `shards` explicit; an empty piece still carries its immediate.
 * Returns `[offset, length]` pairs.
 */
export function shardRanges(length: number, shards: number): Array<[number, number]> {
  const size = Math.ceil(length / shards / SHARD_ALIGN) * SHARD_ALIGN;
  const out: Array<[number, number]> = [];
  for (let i = 0; i < shards; i++) {
    const start = Math.min(length, i * size);
    const end = Math.min(length, start + size);
    out.push([start, end - start]);
  }
  return out;
}

/** The shape of a request as far as arrival counts go: what a receiver knows without the sender's handles. */
export type ImmShape =
  | { kind: 'single'; length: number; shards?: number; imm?: number }
  | { kind: 'paged'; pages: number; imm?: number }
  | { kind: 'scatter'; lengths: readonly number[]; routing?: ScatterRouting; imm?: number }
  | { kind: 'barrier'; imm: number }
  | { kind: 'imm'; imm: number };

/**
 * Arrivals at one target for a request of this shape over `lanes` NIC pairs (see
 * {@link lanesBetween}). For a scatter, `lengths` lists the targets at that one peer.
 *
 * @example
 * ```ts
 * // decode side: how many immediates will 40 pages and a 1 MiB tail produce?
 * const lanes = lanesBetween(prefillAddr.nics.length, engine.nics);
 * const n = countImms({ kind: 'paged', pages: 40, imm }, lanes) + countImms({ kind: 'single', length: 1 << 20, imm }, lanes);
 * ```
 */
export function countImms(shape: ImmShape, lanes: number): number {
  const bad = (what: string): never => {
    throw new TrellisError('INVALID_ARGUMENT', `countImms: ${what}`);
  };
  const count = (field: string, v: unknown, min = 0): number => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min)
      bad(`${field} must be an integer >= ${min}, got ${typeof v === 'number' ? v : typeof v}`);
    return v as number;
  };
  if (!Number.isInteger(lanes) || lanes < 1) bad(`lanes ${lanes} must be >= 1`);
  if (typeof shape !== 'object' || shape === null) bad('expected a shape with a kind');
  const imm = (shape as { imm?: unknown }).imm;
  if (imm !== undefined && (typeof imm !== 'number' || !Number.isInteger(imm) || imm < 0 || imm > 0xffffffff))
    bad(`imm must be an integer in 0..2^32-1, got ${typeof imm === 'number' ? imm : typeof imm}`);
  switch (shape.kind) {
    case 'single':
      count('length', shape.length);
      if (shape.shards !== undefined) count('shards', shape.shards, 1);
      break;
    case 'paged':
      count('pages', shape.pages);
      break;
    case 'scatter':
      if (!Array.isArray(shape.lengths)) bad('lengths must be an array of byte counts');
      for (const [i, n] of shape.lengths.entries()) count(`lengths[${i}]`, n);
      break;
    case 'barrier':
    case 'imm':
      if (imm === undefined) bad(`a ${shape.kind} shape needs its imm`);
      break;
    default:
      bad(`unknown kind ${JSON.stringify((shape as { kind: unknown }).kind)}`);
  }
  if (shape.imm === undefined) return 0;
  switch (shape.kind) {
    case 'single':
      return shape.shards ?? autoShards(shape.length, lanes);
    case 'paged':
      return shape.pages;
    case 'scatter':
      if (shape.routing === 'bytes') return shape.lengths.reduce((n, len) => n + autoShards(len, lanes), 0);
      return shape.lengths.length;
    case 'barrier':
    case 'imm':
      return 1;
  }
}
