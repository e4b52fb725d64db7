// @trellis/backend-efa addon: the engine kit over libfabric domains.
#include <napi.h>

#include "fabric_domain.hpp"
#include "fabric_lib.hpp"
#include "trellis/napi_engine.hpp"

namespace {

struct FabricFactory {
  // opts: {provider: string ("" = auto), nics: number, strict: boolean, iface?: string}
  static std::vector<std::unique_ptr<trellis::Domain>> create(const Napi::Object& opts, std::string* err) {
    std::vector<std::unique_ptr<trellis::Domain>> out;
    std::string provider = opts.Get("provider").As<Napi::String>().Utf8Value();
    uint32_t nics = opts.Get("nics").As<Napi::Number>().Uint32Value();
    bool strict = opts.Get("strict").As<Napi::Boolean>().Value();
    std::string iface = opts.Has("iface") && opts.Get("iface").IsString() ? opts.Get("iface").As<Napi::String>().Utf8Value() : "";
    bool hmem = !opts.Has("hmem") || opts.Get("hmem").ToBoolean().Value();
    // auto: efa where present; otherwise tcp;ofi_rxm, which reaches other hosts (shm is same-host only).
    std::vector<std::string> candidates = provider.empty() || provider == "auto" ? std::vector<std::string>{"efa", "tcp;ofi_rxm"}
                                                                                : std::vector<std::string>{provider};
    if (strict && (provider.empty() || provider == "auto")) candidates = {"efa"};
    std::string errors;
    for (auto& cand : candidates) {
      out.clear();
      std::string e;
      for (uint32_t i = 0; i < nics; i++) {
        auto d = trellis_efa::FabricDomain::open({cand, strict, iface, static_cast<int>(i), hmem}, &e);
        if (!d) break;
        out.push_back(std::move(d));
      }
      if (out.size() == nics) return out;
      errors += (errors.empty() ? "" : "; ") + e;
    }
    out.clear();
    *err = errors;
    return out;
  }

  // The library facts need libfabric itself: where it could not be loaded, say what to install.
  static bool loaded(Napi::Env env) {
    const auto& lib = trellis_efa::FabricLib::get();
    if (!lib.ok) Napi::Error::New(env, lib.error).ThrowAsJavaScriptException();
    return lib.ok;
  }

  static void extend(Napi::Env env, Napi::Object exports) {
    exports.Set("fabricVersion", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                  if (!loaded(info.Env())) return info.Env().Undefined();
                  return Napi::String::New(info.Env(), trellis_efa::fabric_version()).As<Napi::Value>();
                }));
    exports.Set("fabricLibrary", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                  if (!loaded(info.Env())) return info.Env().Undefined();
                  return Napi::String::New(info.Env(), trellis_efa::fabric_library()).As<Napi::Value>();
                }));
    exports.Set("probe", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                  if (!loaded(info.Env())) return info.Env().Undefined();
                  auto probes = trellis_efa::probe_providers();
                  Napi::Array a = Napi::Array::New(info.Env(), probes.size());
                  for (size_t i = 0; i < probes.size(); i++) {
                    Napi::Object o = Napi::Object::New(info.Env());
                    o.Set("provider", probes[i].provider);
                    o.Set("fabric", probes[i].fabric);
                    o.Set("domain", probes[i].domain);
                    o.Set("rma", probes[i].rma);
                    o.Set("remoteCqData", probes[i].remote_cq_data);
                    o.Set("hmem", probes[i].hmem);
                    o.Set("error", probes[i].error);
                    a.Set(i, o);
                  }
                  return a.As<Napi::Value>();
                }));
  }
};

}  // namespace

TRELLIS_NAPI_MODULE(FabricFactory)
