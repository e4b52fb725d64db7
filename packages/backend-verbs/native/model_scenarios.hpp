// Scenarios that drive the software RC model through the seam, for test/model.test.ts.
#pragma once
#include <napi.h>

namespace trellis_verbs {
// modelScenario(name) → an object of observations (return codes, work completions).
Napi::Value run_model_scenario(const Napi::CallbackInfo& info);
}  // namespace trellis_verbs
