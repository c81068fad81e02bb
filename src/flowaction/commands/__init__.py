"""What a user runs: one module per command (``flowaction <command>``), each a plain function the
command line calls, plus the run-folder rules they share (:mod:`flowaction.commands.rundir`)."""
