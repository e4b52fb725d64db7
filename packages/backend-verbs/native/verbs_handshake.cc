// VerbsDomain's handshake: a TCP exchange of QP numbers, PSNs and addresses with the peer's domain
// (its listening port is in the peer's address), after which both sides move their QPs to RTS.
// Outgoing connections are made on first post; incoming ones are served from the worker's poll.
// The rest of VerbsDomain is verbs_domain.cc; what both share is verbs_domain_impl.hpp.
#include "verbs_domain_impl.hpp"

namespace trellis_verbs {

void VerbsDomain::start_handshake(Peer& p) {
  std::string err;
  if (!p.msg && make_qps(p, &err)) {
    handshake_failed(p, err);
    return;
  }
  p.state = Peer::Connecting;
  p.hs_deadline = Clock::now() + std::chrono::milliseconds(opts_.connect_timeout_ms);
  auto* c = new HsConn;
  c->outgoing = true;
  c->peer = p.index;
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = p.ip;
  sin.sin_port = p.hs_port;
  int rc = connect(c->fd, reinterpret_cast<sockaddr*>(&sin), sizeof sin);
  if (rc && errno != EINPROGRESS) {
    int e = errno;
    ::close(c->fd);
    delete c;
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &p.ip, ip, sizeof ip);
    handshake_failed(p, std::string("connect to ") + ip + ":" + std::to_string(ntohs(p.hs_port)) + ": " + std::strerror(e));
    return;
  }
  c->out.resize(kReqLen);
  put32(&c->out[0], kMagic);
  c->out[4] = kReq;
  put16(&c->out[6], static_cast<uint16_t>(kAddrLen));
  std::memcpy(&c->out[8], addr_.data(), kAddrLen);
  put32(&c->out[8 + kAddrLen], p.msg->qp->qp_num);
  put32(&c->out[12 + kAddrLen], p.wr->qp->qp_num);
  put32(&c->out[16 + kAddrLen], p.psn);
  p.hs = c;
  hs_conns_.push_back(c);
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT;
  ev.data.ptr = c;
  epoll_ctl(hs_ep_, EPOLL_CTL_ADD, c->fd, &ev);
}

void VerbsDomain::handshake_failed(Peer& p, const std::string& why) {
  if (p.hs) {
    close_hs(p.hs);
    p.hs = nullptr;
  }
  p.state = Peer::Idle;
  for (auto& q : p.queued) {
    Completion c;
    c.kind = q.send ? CompKind::Send : CompKind::Write;
    c.ctx = q.send ? q.ctx : q.wr.ctx;
    c.code = Code::PeerLost;
    c.err = ECONNREFUSED;
    c.message = "connecting queue pairs to the peer failed: " + why;
    stash_.push_back(std::move(c));
  }
  p.queued.clear();
}

void VerbsDomain::close_hs(HsConn* c) {
  epoll_ctl(hs_ep_, EPOLL_CTL_DEL, c->fd, nullptr);
  ::close(c->fd);
  hs_conns_.erase(std::remove(hs_conns_.begin(), hs_conns_.end(), c), hs_conns_.end());
  if (c->outgoing && c->peer < peers_.size() && peers_[c->peer]->hs == c) peers_[c->peer]->hs = nullptr;
  delete c;
}

// Connect p's QPs to the remote ones (idempotent); returns false and fails p on error.
void VerbsDomain::connect_qps(Peer& p) {
  std::string err;
  if (to_rts(p.msg->qp, p.rmsg, p.rpsn, p, &err) || to_rts(p.wr->qp, p.rwr, p.rpsn, p, &err)) {
    retire_qps(p);
    handshake_failed(p, err);
    return;
  }
  p.state = Peer::Connected;
  drain_queued(p);
}

// Write what is queued; false when the connection failed (an outgoing one fails its peer's handshake).
bool VerbsDomain::hs_flush(HsConn* c) {
  int soerr = 0;
  socklen_t sl = sizeof soerr;
  getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
  while (!soerr && c->out_off < c->out.size()) {
    ssize_t w = ::send(c->fd, c->out.data() + c->out_off, c->out.size() - c->out_off, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EAGAIN || errno == EINTR) return true;
      soerr = errno;
      break;
    }
    c->out_off += static_cast<size_t>(w);
  }
  if (soerr) {
    if (c->outgoing) {
      Peer& p = *peers_[c->peer];
      char ip[INET_ADDRSTRLEN];
      inet_ntop(AF_INET, &p.ip, ip, sizeof ip);
      handshake_failed(p, std::string("connect to ") + ip + ":" + std::to_string(ntohs(p.hs_port)) + ": " + std::strerror(soerr));
    } else {
      close_hs(c);
    }
    return false;
  }
  if (c->out_off == c->out.size()) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = c;
    epoll_ctl(hs_ep_, EPOLL_CTL_MOD, c->fd, &ev);
  }
  return true;
}

void VerbsDomain::on_hs_readable(HsConn* c) {
  uint8_t buf[512];
  for (;;) {
    ssize_t r = ::read(c->fd, buf, sizeof buf);
    if (r > 0) {
      c->in.insert(c->in.end(), buf, buf + r);
      continue;
    }
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) break;
    // EOF or error.
    if (c->outgoing) {
      Peer& p = *peers_[c->peer];
      std::string why = r == 0 ? "the peer closed the handshake connection" : std::string(std::strerror(errno));
      if (p.state == Peer::Connecting) handshake_failed(p, why);
      else close_hs(c);
    } else {
      close_hs(c);
    }
    return;
  }
  if (c->in.size() < 8) return;
  if (get32(c->in.data()) != kMagic) {
    if (c->outgoing) handshake_failed(*peers_[c->peer], "the peer's handshake port spoke another protocol");
    else close_hs(c);
    return;
  }
  uint8_t type = c->in[4];
  if (type == kErr) {
    size_t n = get16(&c->in[6]);
    if (c->in.size() < 8 + n) return;
    std::string text(c->in.begin() + 8, c->in.begin() + 8 + static_cast<long>(n));
    if (c->outgoing) handshake_failed(*peers_[c->peer], "the peer refused: " + text);
    else close_hs(c);
    return;
  }
  if (type == kResp && c->outgoing) {
    if (c->in.size() < kRespLen) return;
    Peer& p = *peers_[c->peer];
    uint32_t rmsg = get32(&c->in[8]), rwr = get32(&c->in[12]), rpsn = get32(&c->in[16]);
    close_hs(c);
    if (p.state == Peer::Connected) {
      // Already connected by the peer's own request (both sides connected at once): one pair.
      if (p.rmsg == rmsg && p.rwr == rwr) return;
      retire_qps(p);
      if (!p.queued.empty()) start_handshake(p);
      return;
    }
    if (p.state != Peer::Connecting || !p.msg) return;
    p.rmsg = rmsg;
    p.rwr = rwr;
    p.rpsn = rpsn;
    connect_qps(p);
    return;
  }
  if (type == kReq && !c->outgoing) {
    if (c->in.size() < kReqLen) return;
    std::vector<uint8_t> a(c->in.begin() + 8, c->in.begin() + 8 + kAddrLen);
    uint32_t rmsg = get32(&c->in[8 + kAddrLen]), rwr = get32(&c->in[12 + kAddrLen]), rpsn = get32(&c->in[16 + kAddrLen]);
    std::vector<uint8_t> reply;
    auto refuse = [&](const std::string& text) {
      reply.resize(8 + text.size());
      put32(&reply[0], kMagic);
      reply[4] = kErr;
      put16(&reply[6], static_cast<uint16_t>(text.size()));
      std::memcpy(&reply[8], text.data(), text.size());
    };
    if (a[0] != kAddrVersion || (a[1] == 1) != ib_) {
      refuse("incompatible NIC address (version or link layer)");
    } else {
      Peer& p = *peer_by_addr(a, true);
      if (p.state == Peer::Connected && (p.rmsg != rmsg || p.rwr != rwr)) retire_qps(p);  // it reconnects
      std::string err;
      if (!p.msg && make_qps(p, &err)) {
        refuse(err);
      } else if (p.state != Peer::Connected) {
        p.rmsg = rmsg;
        p.rwr = rwr;
        p.rpsn = rpsn;
        connect_qps(p);
      }
      if (reply.empty() && p.state == Peer::Connected) {
        reply.resize(kRespLen);
        put32(&reply[0], kMagic);
        reply[4] = kResp;
        put32(&reply[8], p.msg->qp->qp_num);
        put32(&reply[12], p.wr->qp->qp_num);
        put32(&reply[16], p.psn);
      } else if (reply.empty()) {
        refuse("connecting queue pairs failed");
      }
    }
    c->in.clear();
    c->out = std::move(reply);
    c->out_off = 0;
    if (!hs_flush(c)) return;
    // The requester closes once it has the answer; we close on its EOF.
    return;
  }
  close_hs(c);
}

void VerbsDomain::service_handshakes() {
  epoll_event evs[16];
  int n = epoll_wait(hs_ep_, evs, 16, 0);
  for (int i = 0; i < n; i++) {
    auto* c = static_cast<HsConn*>(evs[i].data.ptr);
    if (!c) {
      for (;;) {
        int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) break;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        auto* in = new HsConn;
        in->fd = fd;
        hs_conns_.push_back(in);
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.ptr = in;
        epoll_ctl(hs_ep_, EPOLL_CTL_ADD, fd, &ev);
      }
      continue;
    }
    if (std::find(hs_conns_.begin(), hs_conns_.end(), c) == hs_conns_.end()) continue;
    if ((evs[i].events & (EPOLLOUT | EPOLLERR)) && !hs_flush(c)) continue;
    if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_hs_readable(c);
  }
  auto now = Clock::now();
  for (auto& p : peers_) {
    if (p->state == Peer::Connecting && now > p->hs_deadline)
      handshake_failed(*p, "no answer within " + std::to_string(opts_.connect_timeout_ms) + " ms (connectTimeoutMs)");
    else if (p->state == Peer::Connected && !p->queued.empty())
      drain_queued(*p);
  }
}

}  // namespace trellis_verbs
