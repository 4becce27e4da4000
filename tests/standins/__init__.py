"""Stand-ins the tests run gpumlp against: a strict fake device, a fake ``cupy`` module, a stand-in
libcublas, the kernels' host harness, a local HTTP server, a real ``gpumlp serve`` process, and
small helpers several test modules share. Test modules import these, never each other."""
