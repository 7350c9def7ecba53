"""The harness the tests and the benchmarks share (benchmarks/ imports it too).

paths      REPO, the installed `restorer` script, Debian's chromium and its flags
ports      free_port
waiting    wait_for: poll a condition until it holds or time runs out
settings   the daemon's folders under a root, quick test timings, make_settings, serve_config
serve      ServeProcess: `restorer serve` as a real child process (the one launcher)
site       Site, InProcessSite, ServedSite: the two servers in-process (running_site) or the whole
           daemon (running_serve); png_bytes, jpeg_bytes
lan        LanClient / lan_client, LanPair / lan_pair: peers in network namespaces of their own
receiver   a real notification receiver on a loopback port
"""
