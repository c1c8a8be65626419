// The status page, live: poll /api/status and redraw the counts and the table in place.
// Text goes in through textContent only; nothing from the server is parsed as HTML.
"use strict";
(function () {
  const PERIOD_MS = 2000;
  const table = document.getElementById("procs");
  const detail = document.getElementById("detail");
  if (detail) {
    // One process's page: fetch it again and swap its <main> in place (parsed, never run).
    const refresh = async () => {
      try {
        const resp = await fetch(location.href, { cache: "no-store", credentials: "same-origin" });
        if (resp.ok) {
          const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
          const fresh = doc.getElementById("detail");
          const current = document.getElementById("detail");
          if (fresh && current) current.replaceWith(document.adoptNode(fresh));
          document.body.dataset.updated = String(Date.now());
        }
      } catch (err) {
        document.body.dataset.error = String(err);
      }
      setTimeout(refresh, 5000);
    };
    setTimeout(refresh, 5000);
    return;
  }
  if (!table) {
    // Drawn while supervisord was unreachable (no table to fill in): reload once it is back.
    if (!document.getElementById("up")) return;
    const waitUp = async () => {
      try {
        const resp = await fetch("/api/status", { cache: "no-store", credentials: "same-origin" });
        if (resp.ok && (await resp.json()).supervisord.up) {
          location.reload();
          return;
        }
      } catch (err) {
        document.body.dataset.error = String(err);
      }
      setTimeout(waitUp, PERIOD_MS);
    };
    setTimeout(waitUp, PERIOD_MS);
    return;
  }
  const operator = document.body.dataset.role === "operator";
  const tokenMeta = document.querySelector('meta[name="csrf-token"]');
  const token = tokenMeta ? tokenMeta.content : "";
  const ACTIONS = ["restart", "stop", "start"];

  function size(n) {
    let v = n;
    for (const unit of ["B", "KiB", "MiB", "GiB"]) {
      if (Math.abs(v) < 1024 || unit === "GiB") {
        return unit === "B" ? v.toFixed(0) + unit : v.toFixed(1) + unit;
      }
      v /= 1024;
    }
    return String(n);
  }

  function uptime(seconds) {
    const s = Math.floor(seconds);
    const pad = (x) => String(x).padStart(2, "0");
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + pad(s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + pad(Math.floor((s % 3600) / 60)) + "m";
    return Math.floor(s / 86400) + "d " + pad(Math.floor((s % 86400) / 3600)) + "h";
  }

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (cls) node.className = cls;
    return node;
  }

  function memoryCell(p) {
    const td = el("td");
    // memmon's ceiling is compared with what memmon measures (PSS in the example), as the
    // server-rendered page does; the tree's RSS only where memmon said no measure
    const mem = p.memory_judged_bytes !== null && p.memory_judged_bytes !== undefined
      ? p.memory_judged_bytes : p.memory_bytes;
    const limit = p.memory_limit_bytes;
    if (mem !== null && limit) {
      const pct = Math.min(100, (100 * mem) / limit);
      const bar = el("span", null, "bar");
      bar.title = pct.toFixed(0) + "%";
      const fill = el("span", null, pct >= 90 ? "hot" : "");
      fill.style.width = pct.toFixed(0) + "%";
      bar.appendChild(fill);
      td.appendChild(bar);
      td.appendChild(document.createTextNode(size(mem) + " / " + size(limit) + " "));
      const room = limit - mem;
      const note = el("small");
      if (room < 0) note.appendChild(el("span", size(-room) + " over", "over"));
      else note.textContent = size(room) + " free";
      td.appendChild(note);
    } else if (mem !== null) {
      td.textContent = size(mem);
    } else if (limit) {
      td.textContent = "\u2013 / " + size(limit);
    } else {
      td.textContent = "\u2013";
    }
    return td;
  }

  function forms(full) {
    const td = el("td", null, "acts");
    for (const action of ACTIONS) {
      const form = el("form", null, "act");
      form.method = "post";
      form.action = "/action";
      for (const [k, v] of [["csrf", token], ["process", full], ["back", "/"]]) {
        const input = document.createElement("input");
        input.type = "hidden";
        input.name = k;
        input.value = v;
        form.appendChild(input);
      }
      const button = el("button", action);
      button.name = "action";
      button.value = action;
      form.appendChild(button);
      td.appendChild(form);
    }
    return td;
  }

  function row(p) {
    const full = p.group + ":" + p.name;
    const tr = el("tr");
    if (p.trouble.length) tr.className = "t" + p.rank;
    tr.dataset.name = full;
    const name = el("td");
    const link = el("a", p.group === p.name ? p.name : full);
    link.href = "/process/" + encodeURIComponent(full).replace(/%3A/g, ":");
    name.appendChild(link);
    tr.appendChild(name);
    tr.appendChild(el("td", p.state, "s-" + p.state));
    tr.appendChild(el("td", p.pid ? String(p.pid) : "\u2013"));
    tr.appendChild(el("td", p.uptime_seconds !== null ? uptime(p.uptime_seconds) : "\u2013"));
    tr.appendChild(memoryCell(p));
    const r = p.restarts;
    for (const v of [r.crash, r.memory, r.probe, r.planned]) {
      tr.appendChild(el("td", v === null ? "\u2013" : String(v)));
    }
    let exit = "\u2013";
    if (p.exit_reason) exit = p.exit_reason;
    else if (p.exit_status !== null) exit = "exit status " + p.exit_status;
    tr.appendChild(el("td", exit));
    tr.appendChild(el("td", p.trouble.join(", "), "trouble"));
    if (operator) tr.appendChild(forms(full));
    return tr;
  }

  // The same sentence as page.py's unreadable_warning.
  const UNREADABLE_NAMED = 10;
  function unreadableWarning(names) {
    if (!names || !names.length) return "";
    let shown = names.slice(0, UNREADABLE_NAMED).join(", ");
    if (names.length > UNREADABLE_NAMED) {
      shown += " and " + (names.length - UNREADABLE_NAMED) + " more";
    }
    const noun = names.length === 1 ? "process" : "processes";
    return "memmon cannot read " + names.length + " " + noun + ": " + shown +
      " (run memmon as the workers' user or root)";
  }

  // The same sentence as page.py's outbox_warning.
  function outboxWarning(outbox) {
    if (!outbox || !outbox.failing) return "";
    const held = outbox.spooled + " alert" + (outbox.spooled === 1 ? "" : "s") +
      " kept in memory";
    const lost = outbox.dropped ? ", " + outbox.dropped + " lost" : "";
    return "crashmail cannot write its outbox (" + outbox.error + "): " + held + lost +
      " (free disk space or stop what holds the file locked; they are written once it can)";
  }

  // The same sentence as page.py's delivery_warning.
  function deliveryWarning(sinks) {
    const stuck = (sinks || [])
      .filter((s) => s.pending && s.failures)
      .map((s) => s.sink + ": " + s.pending + " waiting after " + s.failures +
        " failed attempt" + (s.failures === 1 ? "" : "s"));
    if (!stuck.length) return "";
    let shown = stuck.slice(0, UNREADABLE_NAMED).join("; ");
    if (stuck.length > UNREADABLE_NAMED) {
      shown += "; and " + (stuck.length - UNREADABLE_NAMED) + " more sinks";
    }
    return "crashmail cannot deliver every alert (" + shown +
      "); crashmail's log says why (outbox.delivery_failed), and they are sent once the" +
      " sink takes them";
  }

  function draw(doc) {
    const warn = document.getElementById("unreadable");
    if (warn) {
      warn.textContent = unreadableWarning(doc.memmon_unreadable);
      warn.hidden = !warn.textContent;
    }
    const trouble = document.getElementById("outbox");
    if (trouble) {
      trouble.textContent = outboxWarning(doc.outbox);
      trouble.hidden = !trouble.textContent;
    }
    const stuck = document.getElementById("delivery");
    if (stuck) {
      stuck.textContent = deliveryWarning(doc.alert_sinks);
      stuck.hidden = !stuck.textContent;
    }
    for (const li of document.querySelectorAll("li[data-count]")) {
      const v = doc.counts[li.dataset.count];
      li.querySelector("b").textContent = v === null || v === undefined ? "\u2013" : String(v);
      li.classList.toggle("bad", Boolean(v) && li.dataset.count !== "running");
    }
    const up = document.getElementById("up");
    up.textContent = doc.supervisord.up
      ? "supervisord " + (doc.supervisord.version || "") + " is up"
      : "supervisord is unreachable";
    up.className = doc.supervisord.up ? "" : "down";
    document.getElementById("nprocs").textContent = String(doc.processes.length);
    const t = new Date(doc.time * 1000);
    const two = (x) => String(x).padStart(2, "0");
    document.getElementById("when").textContent =
      t.getFullYear() + "-" + two(t.getMonth() + 1) + "-" + two(t.getDate()) + " " +
      two(t.getHours()) + ":" + two(t.getMinutes()) + ":" + two(t.getSeconds());
    // A button or link in the table has the keyboard's focus: redraw the table once it
    // moves on, not under it (the counts above are redrawn anyway)
    const focused = document.activeElement;
    if (!(focused && focused !== document.body && table.contains(focused))) {
      const body = document.createElement("tbody");
      for (const p of doc.processes) body.appendChild(row(p));
      table.replaceChild(body, table.tBodies[0]);
    }
    document.body.dataset.updated = String(doc.time);
  }

  let lastAnswer = Date.now();
  function unanswered(why) {
    // The exporter itself is gone (restarted, stopped) or refuses: say so instead of
    // leaving the last "is up" and table standing as if they were live
    document.body.dataset.error = why;
    if (Date.now() - lastAnswer < 2 * PERIOD_MS) return;
    const up = document.getElementById("up");
    const t = new Date(lastAnswer);
    const two = (x) => String(x).padStart(2, "0");
    up.textContent = "no answer from the exporter since " + two(t.getHours()) + ":" +
      two(t.getMinutes()) + ":" + two(t.getSeconds()) + " (" + why + "); the figures below" +
      " are from then";
    up.className = "down";
  }

  async function poll() {
    try {
      const resp = await fetch("/api/status", { cache: "no-store", credentials: "same-origin" });
      if (resp.ok) {
        draw(await resp.json());
        lastAnswer = Date.now();
      } else {
        unanswered("HTTP " + resp.status);
      }
    } catch (err) {
      unanswered(String(err));
    }
    setTimeout(poll, PERIOD_MS);
  }
  setTimeout(poll, PERIOD_MS);
})();
