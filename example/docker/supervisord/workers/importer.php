<?php
// Imports a feed into a buffer that PHP's memory_limit does not stop (run with
// `php -d memory_limit=-1`, as workers that need "unlimited" memory often are): it grows about
// 1 MiB a second past any memory_limit, which is what a process-level ceiling (memmon) is for.
// It stops growing at --max-mb (48) so the example never runs away with the machine's memory.
declare(strict_types=1);

$perSecond = (int) ($argv[1] ?? 1);
$maxMb = (int) ($argv[2] ?? 48);
$buffers = [];
fwrite(STDOUT, "importer: memory_limit " . ini_get('memory_limit') . ", growing {$perSecond} MiB/s up to {$maxMb} MiB\n");
while (true) {
    if (count($buffers) < $maxMb) {
        for ($i = 0; $i < $perSecond && count($buffers) < $maxMb; $i++) {
            // str_repeat touches every byte: resident memory, not just reserved address space
            $buffers[] = str_repeat(chr(65 + count($buffers) % 26), 1 << 20);
        }
    }
    sleep(1);
}
