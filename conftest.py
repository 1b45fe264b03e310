"""pytest configuration: report the power-loss campaign's coverage at the end of the run."""


def pytest_terminal_summary(terminalreporter):
    try:
        import test_powerloss
    except ImportError:
        return
    for name, cuts, mounts in test_powerloss.COVERED:
        terminalreporter.write_line("power-loss campaign: %s: %d cut points covered, %d remounts checked"
                                    % (name, cuts, mounts))
