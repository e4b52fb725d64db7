// Between the raw program (bench/rma_raw.c) and an engine: the addresses each side needs of the
// other. An engine's NIC entry in a NetAddr is [u16 name length][endpoint name][u64 sink address]
// [u64 sink key] (native/fabric_domain.cc, FabricDomain::address).
import { MrDesc, NetAddr } from '@trellis/core';

/** What `rma_raw <provider> target …` prints first: its endpoint and its region's and sink's keys. */
export interface RawTarget {
  name: string; // hex
  addr: string;
  key: string;
  sinkAddr: string;
  sinkKey: string;
}

/** For `rma_raw … into`: the endpoint name (hex), address and key of an engine's region, NIC 0. */
export function rawIntoArgs(dst: MrDesc): [name: string, addr: string, key: string] {
  const nic = dst.owner.nics[0]!;
  const nameLen = nic[0]! | (nic[1]! << 8);
  const key = dst.nics[0]!;
  return [Buffer.from(nic.subarray(2, 2 + nameLen)).toString('hex'), String(key.addr), String(key.rkey)];
}

/** The raw program's target as an engine of `kind` sees a peer's region of `length` bytes. */
export function rawTargetDesc(kind: string, t: RawTarget, length: number): MrDesc {
  const name = Buffer.from(t.name, 'hex');
  const nic = Buffer.alloc(2 + name.length + 16);
  nic.writeUInt16LE(name.length, 0);
  name.copy(nic, 2);
  nic.writeBigUInt64LE(BigInt(t.sinkAddr), 2 + name.length);
  nic.writeBigUInt64LE(BigInt(t.sinkKey), 10 + name.length);
  const owner = new NetAddr(kind, 1, [new Uint8Array(nic)]);
  return new MrDesc(owner, BigInt(t.addr), length, [{ addr: BigInt(t.addr), rkey: BigInt(t.key) }]);
}
