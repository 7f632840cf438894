"""`taskenv bench`: load a running taskenv over HTTP and, in the same run, the same Docker engine
directly, so every figure comes with the baseline it should be judged against.

    export TASKENV_KEY=...   # the key `taskenv up` printed
    taskenv bench -k 4 -m 500 -c 8 --provisions 50 --provision-concurrency 50 --out b.json --plot b.png
    # 5,000 waits held by one API process (32 execs per environment at most, by default):
    taskenv bench -k 160 -m 0 -n 0 --hold 5000 --hold-timeout 600 --api-pid PID_OF_THE_API_PROCESS

Leftovers after a SIGKILLed run (Ctrl-C cleans up by itself; a second Ctrl-C abandons that):
raw containers carry the label `taskenv.bench=true`; environments expire on their own 10
minutes after `--max-seconds`.
"""
