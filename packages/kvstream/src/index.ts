/**
 * `@trellis/kvstream` — layer-by-layer KV-cache streaming for disaggregated prefill and decode.
 *
 * The decode server admits a request ({@link KvStreamReceiver.admit}): pages come from its pool and
 * the page table goes to the prefill server, which writes each layer's pages as soon as the layer
 * is computed ({@link KvStreamSender.bind}) and finishes with one write of the last partial page and
 * an opaque tail. Decode knows the KV is complete when its immediate counter reaches the number of
 * writes it expects — no "done" message.
 *
 * @packageDocumentation
 */
export { KvLayout, type KvLayoutSpec, type KvSegment, type KvTensorSpec } from './layout.js';
export { isKvMessage } from './protocol.js';
export {
  type KvAdmission,
  type KvAdmitRequest,
  type KvReady,
  type KvReceiverStats,
  KvStreamReceiver,
  type KvStreamReceiverOptions,
} from './receiver.js';
export {
  type KvBindOptions,
  type KvIncomingRequest,
  type KvProgress,
  type KvSenderStats,
  KvSendStream,
  KvStreamSender,
  type KvStreamSenderOptions,
} from './sender.js';
