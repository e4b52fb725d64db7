// The one addon of @trellis/moe (the native proxy and the CUDA target): $TRELLIS_MOE_ADDON, else a
// build from source in build/Release, else the prebuilt binary for this platform.
export const MOE_ADDON = { name: 'trellis_moe', env: 'TRELLIS_MOE_ADDON' };
export const MOE_BUILD_NEEDS = 'cmake and a C++20 compiler (and nvcc for cudaMoeOps)';
