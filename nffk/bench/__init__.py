"""Kernel microbenchmarks: `nffk bench` and the pytest-benchmark suites in bench/.

    registry  cases (op, config, pass, size) and their implementations (nffk and the peers)
    cases/    one module per op: tensor_product, spherical_harmonics, neighbor_list, conv, model
    timing    warm-up, interleaved rounds, rotated inputs, device synchronisation, medians
    machine   machine description, package versions, the copy-bandwidth and matmul floors
    runner    runs cases into a report (a JSON-ready dict)
    report    table (terminal, Markdown) and JSON;  plots: PNG sweeps;  cli: `nffk bench`
"""
