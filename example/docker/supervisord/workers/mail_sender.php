<?php
// The seed's typical worker: sends one e-mail at a time over SMTP, a few MB of PHP memory.
// Run with `php -d memory_limit=16M`. The SMTP server is $SMTP_ADDRESS (the example stack's
// catch-all server); when it is not up yet the message waits for the next round.
declare(strict_types=1);

function smtp_send(string $address, string $from, string $to, string $subject, string $body): void
{
    $sock = @stream_socket_client("tcp://$address", $errno, $errstr, 5.0);
    if ($sock === false) {
        throw new RuntimeException("cannot reach SMTP server $address: $errstr");
    }
    stream_set_timeout($sock, 10);
    $expect = function (string $code) use ($sock): void {
        do {
            $line = fgets($sock);
            if ($line === false) {
                throw new RuntimeException("SMTP server closed the connection");
            }
        } while (isset($line[3]) && $line[3] === '-');
        if (strncmp($line, $code, 3) !== 0) {
            throw new RuntimeException('SMTP server answered ' . trim($line));
        }
    };
    $say = function (string $line, string $code) use ($sock, $expect): void {
        fwrite($sock, "$line\r\n");
        $expect($code);
    };
    $expect('220');
    $say('EHLO ' . gethostname(), '250');
    $say("MAIL FROM:<$from>", '250');
    $say("RCPT TO:<$to>", '250');
    $say('DATA', '354');
    $date = date(DATE_RFC2822);
    $message = "From: $from\r\nTo: $to\r\nSubject: $subject\r\nDate: $date\r\n\r\n$body\r\n.";
    $say($message, '250');
    $say('QUIT', '221');
    fclose($sock);
}

$address = getenv('SMTP_ADDRESS') ?: '127.0.0.1:2525';
$worker = getenv('SUPERVISOR_PROCESS_NAME') ?: 'mail_sender';
$every = (float) ($argv[1] ?? 5);
$sent = 0;
while (true) {
    try {
        $sent++;
        smtp_send($address, "$worker@example.invalid", 'customers@example.invalid',
            "Order confirmation #$sent from $worker", "Hello,\r\nyour order $sent is on its way.");
        fwrite(STDOUT, "$worker: sent message $sent (" . memory_get_usage() . " bytes of PHP memory)\n");
    } catch (RuntimeException $e) {
        $sent--;
        fwrite(STDOUT, "$worker: will retry: {$e->getMessage()}\n");
    }
    usleep((int) ($every * (0.5 + mt_rand() / mt_getrandmax()) * 1e6));
}
