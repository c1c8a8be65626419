<?php
// Builds a monthly invoice export in memory, a chunk of rows at a time, and never frees the rows: it
// runs into PHP's memory_limit (16M, from `php -d memory_limit=16M`) after a few seconds and PHP
// ends it with status 255 and, on stderr:
//   PHP Fatal error:  Allowed memory size of 16777216 bytes exhausted (tried to allocate ...)
// crashmail names the cause: "ran out of PHP memory (memory_limit 16 MiB)".
declare(strict_types=1);

$chunk = (int) ($argv[1] ?? 262144);
$rows = [];
fwrite(STDOUT, "invoice_builder: building the invoice export (memory_limit " . ini_get('memory_limit') . ")\n");
while (true) {
    $rows[] = str_repeat('r', $chunk);
    usleep(100000);
}
