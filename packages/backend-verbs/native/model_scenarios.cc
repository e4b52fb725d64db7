// Scenarios that drive the software RC model directly through the Verbs seam (two ports, raw QPs,
// no engine) and report what it did: return codes and work completions. test/model.test.ts
// asserts on every value. They exist to pin the model's RC semantics, which the engine's tests
// only reach indirectly.
#include "model_scenarios.hpp"

#include <arpa/inet.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "verbs_api.hpp"
#include "verbs_domain.hpp"

namespace trellis_verbs {
using Clock = std::chrono::steady_clock;

namespace {

struct Side {
  Verbs& v = rc_model();
  ibv_context* ctx = nullptr;
  ibv_pd* pd = nullptr;
  ibv_cq* cq = nullptr;
  ibv_srq* srq = nullptr;
  ibv_qp* qp = nullptr;
  ibv_gid gid{};
  std::vector<uint8_t> mem = std::vector<uint8_t>(1 << 16);
  ibv_mr* mr = nullptr;

  bool open(int cqe, uint32_t max_send_wr, std::string* err) {
    ctx = v.open_device("rcm0", err);
    if (!ctx) return false;
    pd = v.alloc_pd(ctx);
    cq = v.create_cq(ctx, cqe, nullptr);
    ibv_srq_init_attr sa{};
    sa.attr.max_wr = 64;
    sa.attr.max_sge = 1;
    srq = v.create_srq(pd, &sa);
    ibv_qp_init_attr ia{};
    ia.send_cq = cq;
    ia.recv_cq = cq;
    ia.srq = srq;
    ia.qp_type = IBV_QPT_RC;
    ia.cap.max_send_wr = max_send_wr;
    ia.cap.max_send_sge = 1;
    qp = v.create_qp(pd, &ia);
    mr = v.reg_mr(pd, mem.data(), mem.size(), IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    v.query_gid(ctx, 1, 1, &gid);
    return pd && cq && srq && qp && mr;
  }
  void close() {
    if (!ctx) return;
    if (mr) v.dereg_mr(mr);
    if (qp) v.destroy_qp(qp);
    if (srq) v.destroy_srq(srq);
    if (cq) v.destroy_cq(cq);
    if (pd) v.dealloc_pd(pd);
    v.close_device(ctx);
    ctx = nullptr;
    mr = nullptr;
    qp = nullptr;
  }
  int init() {
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_INIT;
    a.port_num = 1;
    a.qp_access_flags = IBV_ACCESS_REMOTE_WRITE;
    return v.modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
  }
  int rtr(const Side& peer, uint8_t min_rnr_timer = 1) {
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_RTR;
    a.path_mtu = IBV_MTU_1024;
    a.dest_qp_num = peer.qp->qp_num;
    a.rq_psn = 0;
    a.max_dest_rd_atomic = 1;
    a.min_rnr_timer = min_rnr_timer;
    a.ah_attr.is_global = 1;
    a.ah_attr.grh.dgid = peer.gid;
    a.ah_attr.grh.sgid_index = 1;
    a.ah_attr.port_num = 1;
    return v.modify_qp(qp, &a,
                       IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                           IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
  }
  int rts(uint8_t timeout = 10, uint8_t retry = 2, uint8_t rnr_retry = 7) {
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_RTS;
    a.sq_psn = 0;
    a.timeout = timeout;
    a.retry_cnt = retry;
    a.rnr_retry = rnr_retry;
    a.max_rd_atomic = 1;
    return v.modify_qp(qp, &a,
                       IBV_QP_STATE | IBV_QP_SQ_PSN | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                           IBV_QP_MAX_QP_RD_ATOMIC);
  }
  int write(uint64_t id, uint64_t off, uint32_t len, const Side& dst, uint64_t doff, bool imm = false,
            uint32_t rkey = 0, uint32_t lkey = 0, ibv_send_wr** bad_out = nullptr) {
    ibv_sge s{reinterpret_cast<uint64_t>(mem.data() + off), len, lkey ? lkey : mr->lkey};
    ibv_send_wr w{};
    w.wr_id = id;
    w.sg_list = len ? &s : nullptr;
    w.num_sge = len ? 1 : 0;
    w.opcode = imm ? IBV_WR_RDMA_WRITE_WITH_IMM : IBV_WR_RDMA_WRITE;
    w.send_flags = IBV_SEND_SIGNALED;
    w.imm_data = htonl(static_cast<uint32_t>(id));
    w.wr.rdma.remote_addr = reinterpret_cast<uint64_t>(dst.mem.data() + doff);
    w.wr.rdma.rkey = rkey ? rkey : dst.mr->rkey;
    ibv_send_wr* bad = nullptr;
    int rc = v.post_send(qp, &w, &bad);
    if (bad_out) *bad_out = bad;
    return rc;
  }
  int recvs(int n) {
    for (int i = 0; i < n; i++) {
      ibv_recv_wr w{};
      w.wr_id = 1000 + static_cast<uint64_t>(i);
      ibv_recv_wr* bad = nullptr;
      if (int rc = v.post_srq_recv(srq, &w, &bad)) return rc;
    }
    return 0;
  }
  // Poll until n completions or the timeout; a negative poll result ends it.
  std::vector<ibv_wc> poll(size_t n, int timeout_ms, int* err = nullptr) {
    std::vector<ibv_wc> out;
    auto end = Clock::now() + std::chrono::milliseconds(timeout_ms);
    while (out.size() < n && Clock::now() < end) {
      ibv_wc wc[16];
      int k = v.poll_cq(cq, 16, wc);
      if (k < 0) {
        if (err) *err = k;
        break;
      }
      out.insert(out.end(), wc, wc + k);
      if (!k) std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    return out;
  }
};

Napi::Array wcs(Napi::Env env, const std::vector<ibv_wc>& v) {
  Napi::Array a = Napi::Array::New(env, v.size());
  for (size_t i = 0; i < v.size(); i++) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("wrId", static_cast<double>(v[i].wr_id));
    o.Set("status", ibv_wc_status_str(v[i].status));
    o.Set("opcode", static_cast<double>(v[i].opcode));
    if (v[i].wc_flags & IBV_WC_WITH_IMM) o.Set("imm", static_cast<double>(ntohl(v[i].imm_data)));
    o.Set("byteLen", static_cast<double>(v[i].byte_len));
    a.Set(i, o);
  }
  return a;
}

struct Pair {
  Side a, b;
  std::string err;
  bool open(int cqe = 256, uint32_t max_send_wr = 64) { return a.open(cqe, max_send_wr, &err) && b.open(cqe, max_send_wr, &err); }
  bool connect(uint8_t timeout = 10, uint8_t retry = 2, uint8_t rnr_retry = 7, uint8_t rnr_timer = 1) {
    return !a.init() && !b.init() && !a.rtr(b, rnr_timer) && !b.rtr(a, rnr_timer) && !a.rts(timeout, retry, rnr_retry) &&
           !b.rts(timeout, retry, rnr_retry);
  }
  ~Pair() {
    a.close();
    b.close();
  }
};

}  // namespace

// Two domains post to each other before either has connected: both handshakes cross, and each
// side must end with exactly one QP pair (2 QPs) that carries both directions.
Napi::Value simultaneous(Napi::Env env) {
  Napi::Object r = Napi::Object::New(env);
  VerbsOptions o;
  o.model = true;
  std::string err;
  auto a = VerbsDomain::open(o, &err);
  auto b = a ? VerbsDomain::open(o, &err) : nullptr;
  if (!b) {
    r.Set("error", err);
    return r;
  }
  uint64_t ha = 0, hb = 0;
  auto aa = a->address(), ba = b->address();
  a->add_peer(ba.data(), ba.size(), &hb, &err);
  b->add_peer(aa.data(), aa.size(), &ha, &err);
  int ctx_a = 1, ctx_b = 2;
  trellis::WriteWr w;
  w.has_imm = true;
  w.imm = 5;
  w.peer = hb;
  w.ctx = &ctx_a;
  a->post_write(w);
  w.peer = ha;
  w.ctx = &ctx_b;
  b->post_write(w);
  a->flush_posts();
  b->flush_posts();
  std::vector<trellis::Completion> ca, cb;
  auto end = Clock::now() + std::chrono::seconds(5);
  auto count = [](const std::vector<trellis::Completion>& v, trellis::CompKind k) {
    int n = 0;
    for (auto& c : v) n += c.kind == k && c.code == trellis::Code::Ok;
    return n;
  };
  while (Clock::now() < end && (count(ca, trellis::CompKind::Write) + count(ca, trellis::CompKind::RemoteWrite) < 2 ||
                                count(cb, trellis::CompKind::Write) + count(cb, trellis::CompKind::RemoteWrite) < 2)) {
    a->poll(ca, 64);
    b->poll(cb, 64);
    a->flush_posts();
    b->flush_posts();
  }
  r.Set("aWrites", count(ca, trellis::CompKind::Write));
  r.Set("aImms", count(ca, trellis::CompKind::RemoteWrite));
  r.Set("bWrites", count(cb, trellis::CompKind::Write));
  r.Set("bImms", count(cb, trellis::CompKind::RemoteWrite));
  r.Set("aQps", static_cast<double>(a->live_qps()));
  r.Set("bQps", static_cast<double>(b->live_qps()));
  return r;
}

Napi::Value run_model_scenario(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = info[0].As<Napi::String>().Utf8Value();
  if (name == "simultaneous-connect") return simultaneous(env);
  Napi::Object r = Napi::Object::New(env);
  Pair p;
  bool small_cq = name == "cq-overrun";
  if (!p.open(small_cq ? 4 : 256, name == "sq-full" ? 4 : 256)) {
    r.Set("error", p.err);
    return r;
  }
  if (name == "states") {
    r.Set("postInReset", p.a.write(1, 0, 8, p.b, 0));
    r.Set("resetToRtr", p.a.rtr(p.b));
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_INIT;
    r.Set("initWithoutPort", rc_model().modify_qp(p.a.qp, &a, IBV_QP_STATE));
    r.Set("init", p.a.init());
    r.Set("postInInit", p.a.write(1, 0, 8, p.b, 0));
    r.Set("initToRts", p.a.rts());
    r.Set("rtr", p.a.rtr(p.b));
    r.Set("postInRtr", p.a.write(1, 0, 8, p.b, 0));
    r.Set("rts", p.a.rts());
    p.b.init();
    p.b.rtr(p.a);
    p.b.rts();
    r.Set("postInRts", p.a.write(1, 0, 8, p.b, 0));
    r.Set("completions", wcs(env, p.a.poll(1, 2000)));
  } else if (name == "order") {
    // 200 writes to the same 8 bytes, each carrying its index; the last one with an immediate.
    p.connect();
    p.b.recvs(1);
    int rc = 0;
    for (uint64_t i = 0; i < 200; i++) {
      std::memcpy(p.a.mem.data() + i * 8, &i, 8);
      rc |= p.a.write(i, i * 8, 8, p.b, 0, i == 199);
    }
    r.Set("posted", rc);
    auto sent = p.a.poll(200, 5000);  // the CQ holds 256
    auto got = p.b.poll(1, 5000);
    uint64_t final_value = 0;
    std::memcpy(&final_value, p.b.mem.data(), 8);
    bool in_order = sent.size() == 200;
    for (size_t i = 0; in_order && i < sent.size(); i++) in_order = sent[i].wr_id == i && sent[i].status == IBV_WC_SUCCESS;
    r.Set("sendCompletions", static_cast<double>(sent.size()));
    r.Set("inOrder", in_order);
    r.Set("finalValue", static_cast<double>(final_value));
    r.Set("received", wcs(env, got));
  } else if (name == "rnr-exceeded") {
    p.connect(10, 2, /*rnr_retry*/ 1);
    r.Set("posted", p.a.write(7, 0, 8, p.b, 0, true));  // no receive posted at b
    r.Set("completions", wcs(env, p.a.poll(1, 5000)));
    r.Set("afterError", p.a.write(8, 0, 8, p.b, 0));
    r.Set("flushed", wcs(env, p.a.poll(1, 2000)));
  } else if (name == "rnr-recovers") {
    p.connect(10, 2, /*rnr_retry: forever*/ 7);
    std::memset(p.a.mem.data(), 0x5a, 64);
    r.Set("posted", p.a.write(7, 0, 64, p.b, 0, true));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    r.Set("beforeRecv", wcs(env, p.a.poll(1, 1)));
    p.b.recvs(1);
    r.Set("completions", wcs(env, p.a.poll(1, 5000)));
    r.Set("received", wcs(env, p.b.poll(1, 5000)));
    r.Set("bytesOk", p.b.mem[0] == 0x5a && p.b.mem[63] == 0x5a);
  } else if (name == "remote-access") {
    p.connect();
    p.a.write(1, 0, 8, p.b, 0, false, /*rkey*/ p.b.mr->rkey ^ 0x5a5a00);  // bad rkey
    p.a.write(2, 0, 8, p.b, 0);                                           // flushed behind it
    r.Set("badRkey", wcs(env, p.a.poll(2, 5000)));
    r.Set("responderState", static_cast<double>(p.b.qp->state));
  } else if (name == "out-of-bounds") {
    p.connect();
    p.a.write(1, 0, 64, p.b, p.b.mem.size() - 32);
    r.Set("completions", wcs(env, p.a.poll(1, 5000)));
  } else if (name == "no-remote-write") {
    p.connect();
    ibv_mr* ro = rc_model().reg_mr(p.b.pd, p.b.mem.data(), 4096, IBV_ACCESS_LOCAL_WRITE);
    p.a.write(1, 0, 8, p.b, 0, false, ro->rkey);
    r.Set("completions", wcs(env, p.a.poll(1, 5000)));
    rc_model().dereg_mr(ro);
    ibv_mr* bad = rc_model().reg_mr(p.b.pd, p.b.mem.data(), 4096, IBV_ACCESS_REMOTE_WRITE);
    r.Set("remoteWithoutLocalWrite", bad == nullptr);
  } else if (name == "local-protection") {
    p.connect();
    p.a.write(1, 0, 8, p.b, 0, false, 0, /*lkey*/ 0xdead);
    r.Set("completions", wcs(env, p.a.poll(1, 5000)));
  } else if (name == "cq-overrun") {
    p.connect();
    for (int i = 0; i < 8; i++) p.a.write(static_cast<uint64_t>(i), 0, 8, p.b, 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    int err = 0;
    p.a.poll(8, 500, &err);
    r.Set("pollResult", err);
    r.Set("qpState", static_cast<double>(p.a.qp->state));
  } else if (name == "sq-full") {
    p.connect();
    ibv_sge s{reinterpret_cast<uint64_t>(p.a.mem.data()), 8, p.a.mr->lkey};
    ibv_send_wr w[5]{};
    for (int i = 0; i < 5; i++) {
      w[i].wr_id = static_cast<uint64_t>(i);
      w[i].sg_list = &s;
      w[i].num_sge = 1;
      w[i].opcode = IBV_WR_RDMA_WRITE;
      w[i].send_flags = IBV_SEND_SIGNALED;
      w[i].wr.rdma.remote_addr = reinterpret_cast<uint64_t>(p.b.mem.data());
      w[i].wr.rdma.rkey = p.b.mr->rkey;
      w[i].next = i < 4 ? &w[i + 1] : nullptr;
    }
    ibv_send_wr* bad = nullptr;
    r.Set("rc", rc_model().post_send(p.a.qp, w, &bad));
    r.Set("badIndex", bad ? static_cast<double>(bad - w) : -1.0);
    r.Set("completions", wcs(env, p.a.poll(4, 5000)));
  } else if (name == "retry-exceeded") {
    // The responder's port goes away: nothing acknowledges; after timeout x (retry_cnt + 1) the WR fails.
    p.connect(/*timeout: 4.096 µs x 2^8 ≈ 1 ms*/ 8, /*retry*/ 3);
    uint32_t rkey = p.b.mr->rkey;
    p.b.close();
    auto t0 = Clock::now();
    p.a.write(1, 0, 8, p.b, 0, false, rkey);
    r.Set("completions", wcs(env, p.a.poll(1, 5000)));
    r.Set("ms", std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  } else if (name == "send-too-large") {
    p.connect();
    std::vector<uint8_t> small(16);
    ibv_mr* rmr = rc_model().reg_mr(p.b.pd, small.data(), small.size(), IBV_ACCESS_LOCAL_WRITE);
    ibv_sge rs{reinterpret_cast<uint64_t>(small.data()), 16, rmr->lkey};
    ibv_recv_wr rw{};
    rw.wr_id = 77;
    rw.sg_list = &rs;
    rw.num_sge = 1;
    ibv_recv_wr* rbad = nullptr;
    rc_model().post_srq_recv(p.b.srq, &rw, &rbad);
    ibv_sge s{reinterpret_cast<uint64_t>(p.a.mem.data()), 64, p.a.mr->lkey};
    ibv_send_wr w{};
    w.wr_id = 5;
    w.sg_list = &s;
    w.num_sge = 1;
    w.opcode = IBV_WR_SEND;
    w.send_flags = IBV_SEND_SIGNALED;
    ibv_send_wr* bad = nullptr;
    rc_model().post_send(p.a.qp, &w, &bad);
    r.Set("requester", wcs(env, p.a.poll(1, 5000)));
    r.Set("responder", wcs(env, p.b.poll(1, 5000)));
    rc_model().dereg_mr(rmr);
  } else {
    r.Set("error", "unknown scenario " + name);
  }
  return r;
}

}  // namespace trellis_verbs
