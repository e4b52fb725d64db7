// The JS↔addon event format is written on both sides by hand (napi_engine.hpp packs, native-engine.ts
// reads): the constants the two share are checked here against the header's text.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { POSTED_FLAG } from '../src/native-engine.js';

const header = readFileSync(new URL('../native/include/trellis/napi_engine.hpp', import.meta.url), 'utf8');

describe('the engine kit event format', () => {
  it('the posted flag of a completion code word is the same number on both sides', () => {
    const m = /constexpr uint32_t kPostedFlag = (0x[0-9a-fA-F]+|\d+);/.exec(header);
    expect(m).not.toBeNull();
    expect(Number(m![1])).toBe(POSTED_FLAG);
  });

  it('completions are packed 4 words per op on both sides', () => {
    expect(header).toContain('Napi::Uint32Array::New(env, ev.ops.size() * 4)');
    expect(header).toMatch(
      /ops\[4 \* i \+ 1\] = static_cast<uint32_t>\(d\.code\) \| \(d\.posted \? kPostedFlag : 0u\);/,
    );
    const js = readFileSync(new URL('../src/native-engine.ts', import.meta.url), 'utf8');
    expect(js).toContain('for (let i = 0; i < ops.length; i += 4)');
    expect(js).toContain('this.codeNames[word & ~POSTED_FLAG]');
  });
});
