# Included by llama.cpp's CMake build right after its project() call
# (CMAKE_PROJECT_INCLUDE, set in .cargo/config.toml), so every llama.cpp and
# ggml target gets these options whatever the host compiler or CPU.
#
# Never build ggml's AMX kernels. With GGML_NATIVE on an Intel Xeon that has
# AMX, `-march=native` defines __AMX_INT8__ and ggml compiles its AMX matrix
# kernels, which crash every generation with SIGSEGV in
# ggml_backend_amx_mul_mat (llama.cpp #20824; reproduced on this project's
# build machines). Explicit -mno-* flags win over -march in GCC and Clang
# whatever their order, so the rest of the native feature set stays.
# `.ci/check-no-amx.sh` fails the build if the kernels come back.
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64|i.86)$")
  add_compile_options(-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
endif()
