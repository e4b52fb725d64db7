// Test-only addon: the scenarios that drive the software RC model through the Verbs seam
// (model_scenarios.cc), for test/model.test.ts. Built only on request (the workspace's
// build:native: `cmake --build build --target trellis_verbs_scenarios`); an install never builds it.
#include <napi.h>

#include "model_scenarios.hpp"

namespace {
Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("modelScenario", Napi::Function::New(env, trellis_verbs::run_model_scenario));
  return exports;
}
}  // namespace

NODE_API_MODULE(NODE_GYP_MODULE_NAME, Init)
