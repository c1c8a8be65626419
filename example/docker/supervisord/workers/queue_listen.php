<?php
// Like Laravel's `queue:listen` or a Symfony Messenger consumer that runs each job in a child
// process: the worker itself keeps running when a job dies. Job --fail-at (3) hits a PHP fatal
// error once after each start; the child's stderr is the worker's, so crashmail's log patterns
// (`--pattern php`, with stderr_events_enabled=true) raise one alert for it, not a crash.
declare(strict_types=1);

$failAt = (int) ($argv[1] ?? 3);
$every = (float) ($argv[2] ?? 2);
$php = PHP_BINARY;
for ($job = 1; ; $job++) {
    $code = $job === $failAt
        ? 'function handle(array $job): void { $job->send(); } handle([]);'
        : 'usleep(100000);';
    $status = 0;
    passthru(escapeshellarg($php) . ' -d memory_limit=16M -r ' . escapeshellarg($code), $status);
    fwrite(STDOUT, "queue_listen: job $job finished with status $status\n");
    usleep((int) ($every * 1e6));
}
