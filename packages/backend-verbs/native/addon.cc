// @trellis/backend-verbs addon: the engine kit over verbs domains (libibverbs or the RC model).
#include <napi.h>

#include "trellis/napi_engine.hpp"
#include "verbs_domain.hpp"

namespace {

std::string str(const Napi::Object& o, const char* k, const std::string& d = "") {
  return o.Has(k) && o.Get(k).IsString() ? o.Get(k).As<Napi::String>().Utf8Value() : d;
}
int64_t num(const Napi::Object& o, const char* k, int64_t d) {
  return o.Has(k) && o.Get(k).IsNumber() ? o.Get(k).As<Napi::Number>().Int64Value() : d;
}

struct VerbsFactory {
  // opts: {model: boolean, nics: number, devices?: string[], port?, gidIndex?, handshakeHost?,
  //        handshakePort?, timeout?, retryCnt?, rnrRetry?, minRnrTimer?, connectTimeoutMs?,
  //        relaxedOrdering?, maxSendWr?, immRecvs?}
  static std::vector<std::unique_ptr<trellis::Domain>> create(const Napi::Object& opts, std::string* err) {
    std::vector<std::unique_ptr<trellis::Domain>> out;
    uint32_t nics = opts.Get("nics").As<Napi::Number>().Uint32Value();
    std::vector<std::string> devices;
    if (opts.Has("devices") && opts.Get("devices").IsArray()) {
      Napi::Array a = opts.Get("devices").As<Napi::Array>();
      for (uint32_t i = 0; i < a.Length(); i++) devices.push_back(a.Get(i).As<Napi::String>().Utf8Value());
    }
    for (uint32_t i = 0; i < nics; i++) {
      trellis_verbs::VerbsOptions vo;
      vo.model = opts.Get("model").ToBoolean().Value();
      vo.index = static_cast<int>(i);
      vo.device = i < devices.size() ? devices[i] : "";
      vo.port = static_cast<int>(num(opts, "port", 1));
      vo.gid_index = static_cast<int>(num(opts, "gidIndex", -1));
      vo.handshake_host = str(opts, "handshakeHost");
      vo.handshake_port = static_cast<int>(num(opts, "handshakePort", 0));
      vo.timeout = static_cast<uint8_t>(num(opts, "timeout", 14));
      vo.retry_cnt = static_cast<uint8_t>(num(opts, "retryCnt", 7));
      vo.rnr_retry = static_cast<uint8_t>(num(opts, "rnrRetry", 7));
      vo.min_rnr_timer = static_cast<uint8_t>(num(opts, "minRnrTimer", 12));
      vo.connect_timeout_ms = static_cast<uint32_t>(num(opts, "connectTimeoutMs", 5000));
      vo.relaxed_ordering = !opts.Has("relaxedOrdering") || opts.Get("relaxedOrdering").ToBoolean().Value();
      vo.max_send_wr = static_cast<uint32_t>(num(opts, "maxSendWr", 1024));
      vo.imm_recvs = static_cast<uint32_t>(num(opts, "immRecvs", 2048));
      std::string e;
      auto d = trellis_verbs::VerbsDomain::open(vo, &e);
      if (!d) {
        *err = "NIC " + std::to_string(i) + ": " + e;
        out.clear();
        return out;
      }
      out.push_back(std::move(d));
    }
    return out;
  }

  static void extend(Napi::Env env, Napi::Object exports) {
    exports.Set("devices", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                  bool model = info.Length() > 0 && info[0].ToBoolean().Value();
                  std::string err;
                  auto devs = trellis_verbs::list_devices(model, &err);
                  Napi::Object o = Napi::Object::New(info.Env());
                  Napi::Array a = Napi::Array::New(info.Env(), devs.size());
                  for (size_t i = 0; i < devs.size(); i++) a.Set(i, devs[i]);
                  o.Set("devices", a);
                  o.Set("error", err);
                  return o;
                }));
  }
};

}  // namespace

TRELLIS_NAPI_MODULE(VerbsFactory)
