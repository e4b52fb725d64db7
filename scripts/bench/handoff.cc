// The handoff of one write command from a producer thread (JavaScript's) to a consumer spinning on
// another core (the engine's worker), three ways, in the shapes the engine kit used (Cmd,
// WriteCmd, Run): A, the worker's queue as it was (a vector under a mutex, a WriteCmd allocated per
// command and freed by the consumer); B, a single-producer ring with the write inline in its slot;
// C, the ring with a WriteCmd allocated per command. `stream` pushes a million commands back to back,
// `pingpong` waits for each to be handled before the next (a round trip's hop). Standalone: the
// kit's own ring and WriteRecycler are in packages/core/src/kit/native/include/trellis.
//
//   g++ -O2 -std=c++17 -pthread scripts/bench/handoff.cc -o /tmp/handoff
//   for m in A B C; do for p in stream pingpong; do /tmp/handoff 2 10 $m $p; done; done
//   (args: producer CPU, consumer CPU, A|B|C, stream|pingpong)
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <pthread.h>
#include <thread>
#include <vector>
struct Key { uint64_t a, k; };
struct Run { uint32_t peer; uint8_t l0, ls; uint32_t shards; uint64_t so, dof, len; bool z; Key keys[4]; };
struct WriteCmd { uint64_t op; uint32_t region; bool has_imm; uint32_t imm; std::vector<Run> runs; std::unique_ptr<int> pages; std::shared_ptr<int> port; };
struct Cmd { explicit Cmd(int k) : kind(k) {} int kind; uint32_t id = 0; std::vector<std::vector<uint8_t>> addrs; void* ptr = nullptr; size_t len = 0; int device = -1; bool remote = false; std::unique_ptr<WriteCmd> write; uint32_t peer = 0; std::vector<uint8_t> data; int code = 0; uint64_t at = 0; bool hold = false, quiet = false; uint8_t lane = 0; std::shared_ptr<int> port; };
using clk = std::chrono::steady_clock;
static void pin(int cpu) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu, &s); pthread_setaffinity_np(pthread_self(), sizeof s, &s); }
std::atomic<uint64_t> handled{0};
std::atomic<bool> stop{false};
// A: the Worker's queue
std::mutex mu; std::condition_variable cv; std::vector<Cmd> cmds; std::atomic<bool> pending{false};
void workerA(int cpu) { pin(cpu); std::vector<Cmd> batch; uint64_t sink = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    if (pending.load(std::memory_order_acquire)) { std::lock_guard<std::mutex> g(mu); batch.swap(cmds); pending.store(false, std::memory_order_relaxed); }
    for (auto& c : batch) { sink += c.write->runs[0].len; c.write.reset(); handled.fetch_add(1, std::memory_order_release); }
    batch.clear(); }
  if (sink == 42) puts(""); }
void pushA(uint64_t i) { auto w = std::make_unique<WriteCmd>(); w->op = i; w->runs.resize(1); w->runs[0].len = 4096; Cmd c(3); c.write = std::move(w);
  { std::lock_guard<std::mutex> g(mu); cmds.push_back(std::move(c)); pending.store(true, std::memory_order_release); } cv.notify_one(); }
// B: SPSC ring, the write inline in the slot
struct Slot { uint64_t op; uint32_t region, imm; bool has_imm; Run run; };
constexpr size_t N = 1024; Slot ring[N];
alignas(64) std::atomic<uint64_t> tail{0}; alignas(64) std::atomic<uint64_t> head{0}; alignas(64) uint64_t head_cache = 0;
void workerB(int cpu) { pin(cpu); uint64_t h = 0, sink = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    uint64_t t = tail.load(std::memory_order_acquire);
    for (; h < t; h++) { Slot& s = ring[h % N]; sink += s.run.len; handled.fetch_add(1, std::memory_order_release); }
    head.store(h, std::memory_order_release); }
  if (sink == 42) puts(""); }
void pushB(uint64_t i) { uint64_t t = tail.load(std::memory_order_relaxed);
  while (t - head_cache >= N) head_cache = head.load(std::memory_order_acquire);
  Slot& s = ring[t % N]; s.op = i; s.region = 1; s.imm = 1; s.has_imm = true; s.run = Run{}; s.run.len = 4096;
  tail.store(t + 1, std::memory_order_release); }
// C: the ring, with a WriteCmd allocated per command (JS) and freed by the worker
std::unique_ptr<WriteCmd> ringC[N];
void workerC(int cpu) { pin(cpu); uint64_t h = 0, sink = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    uint64_t t = tail.load(std::memory_order_acquire);
    for (; h < t; h++) { auto w = std::move(ringC[h % N]); sink += w->runs[0].len; handled.fetch_add(1, std::memory_order_release); }
    head.store(h, std::memory_order_release); }
  if (sink == 42) puts(""); }
void pushC(uint64_t i) { uint64_t t = tail.load(std::memory_order_relaxed);
  while (t - head_cache >= N) head_cache = head.load(std::memory_order_acquire);
  auto w = std::make_unique<WriteCmd>(); w->op = i; w->runs.resize(1); w->runs[0].len = 4096; ringC[t % N] = std::move(w);
  tail.store(t + 1, std::memory_order_release); }
int main(int argc, char** argv) {
  int a = atoi(argv[1]), b = atoi(argv[2]); char mode = argv[3][0]; bool ring_mode = mode != 'A'; bool pingpong = argv[4][0] == 'p'; uint64_t n = 1000000;
  pin(a); std::thread w(mode == 'A' ? workerA : mode == 'B' ? workerB : workerC, b);
  double in_push = 0; auto t0 = clk::now();
  for (uint64_t i = 0; i < n; i++) {
    auto p0 = clk::now();
    if (mode == 'B') pushB(i); else if (mode == 'C') pushC(i); else pushA(i);
    in_push += std::chrono::duration<double, std::micro>(clk::now() - p0).count();
    if (pingpong) while (handled.load(std::memory_order_acquire) <= i) {}
  }
  while (handled.load() < n) {}
  double total = std::chrono::duration<double, std::micro>(clk::now() - t0).count();
  stop = true; w.join();
  printf("%s %s cpus %d,%d: %.3f us per command (wall), %.3f us inside push\n", mode == 'A' ? "mutex" : mode == 'B' ? "ring " : "ring+alloc", pingpong ? "pingpong" : "stream  ", a, b, total / n, in_push / n);
}
