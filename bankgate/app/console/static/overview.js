/* bankgate console: the overview, kept current without a reload.
 *
 * Plain JavaScript, no library, no build step. The server renders the page complete
 * (bankgate/app/console/overview.py); this script then updates it:
 *   - the bank links and the open alerts' count from the server-sent events of
 *     /api/live/stream (one a second);
 *   - the day's figures from /api/overview, fetched every 10 s.
 * Each cell's text is made exactly as the server makes it (link_cells, figure_tables
 * there; a test runs both over the same figures). Every value goes in with textContent:
 * a bank or customer name is text, never markup.
 */
(function () {
  "use strict";

  var POLL_MS = 10000;
  var LINK_FIELDS = ["listening", "peers", "last_message", "requests_per_minute",
                     "payments_per_minute", "errors", "debit_link", "signin"];

  // -- the cells: [text, class] -----------------------------------------------------

  function yuan(fen) {
    if (fen === null || fen === undefined) return "-";
    if (fen < 0) return "-" + yuan(-fen);
    var cents = fen % 100;
    return Math.floor(fen / 100) + "." + (cents < 10 ? "0" : "") + cents;
  }

  function ago(s) {
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  function when(iso) {
    return iso ? String(iso).replace("T", " ") : "-";
  }

  function perMille(part, whole) {
    var tenths = Math.floor((part * 2000 + whole) / (2 * whole));
    return Math.floor(tenths / 10) + "." + (tenths % 10) + " %";
  }

  function linkCells(b) {
    var out = {};
    if (!b) {
      LINK_FIELDS.forEach(function (k) { out[k] = ["-", ""]; });
      return out;
    }
    var n = b.endpoints.length;
    out.listening = n ? [b.listening + " of " + n, b.listening >= n ? "ok" : "bad"] : ["-", ""];
    out.peers = [String(b.peers), "num"];
    out.last_message = b.last_message === null ? ["never", ""]
      : [when(b.last_message) + " (" + ago(b.seconds_since) + " ago)", ""];
    out.requests_per_minute = [String(b.requests_per_minute), "num"];
    out.payments_per_minute = [String(b.payments_per_minute), "num"];
    out.errors = b.requests_5m
      ? [perMille(b.errors_5m, b.requests_5m) + " (" + b.errors_5m + " of " + b.requests_5m + ")",
         b.errors_5m ? "num bad" : "num"]
      : ["-", "num"];
    var link = b.debit_link;
    out.debit_link = link === null || link === undefined ? ["-", ""]
      : [(link.connected ? "up" : "down") + ", " + link.queued + " queued",
         link.connected ? "ok" : "bad"];
    out.signin = signinCell(b.signin, b.peers);
    return out;
  }

  // a signing-in bank's connections signed in and the oldest key's age (signin_cell)
  function signinCell(s, peers) {
    if (s === null || s === undefined) return ["-", ""];
    if (s.signed_in) {
      return [s.signed_in + " of " + peers + ", key " + ago(s.key_age) + " old",
              s.signed_in >= peers ? "ok" : "warn"];
    }
    return [s.last_signin ? "none (last " + when(s.last_signin) + ")" : "never",
            peers ? "bad" : ""];
  }

  // "N open alerts" over the overview, as the template writes it
  function alertsLine(list) {
    var n = list.length;
    var critical = list.some(function (a) { return a.severity === "critical"; });
    return [n + " open alert" + (n === 1 ? "" : "s"), critical ? "bad" : (n ? "warn" : "ok")];
  }

  function num(n) { return [String(n), "num"]; }
  function money(fen) { return [yuan(fen), "num"]; }
  function pair(count, fen) { return [count + " / " + yuan(fen), "num"]; }

  function dayRow(name, r) {
    return [[name, ""], num(r.count), money(r.amount), pair(r.reversed_count, r.reversed_amount),
            pair(r.refunded_count, r.refunded_amount), money(r.net),
            pair(r.pending_count, r.pending_amount)];
  }

  function cutoff(c) {
    if (!c) return ["open", ""];
    var text = "closed " + when(c.closed_at) + ": " + c.count + " payment(s), " + yuan(c.total);
    if (c.reason) text += " (" + c.reason + ")";
    return [text, "ok"];
  }

  var RECON_CLASS = {BALANCED: "ok", EXCEPTIONS: "bad", FAILED: "bad"};
  var STOCK_CLASS = {OK: "ok", LOW: "warn", EMPTY: "bad"};

  function recon(r) {
    if (!r) return ["no run yet", ""];
    var text = r.settle_date + " run " + r.run_no + ": " + r.status;
    if (r.open_exceptions) text += ", " + r.open_exceptions + " open exception(s)";
    return [text, RECON_CLASS[r.status] || ""];
  }

  function figureTables(f) {
    var day = f.figures;
    return {
      per_bank: day.banks.map(function (b) { return dayRow(b, day.per_bank[b]); }),
      totals: [dayRow("Total", day.totals)],
      by_channel: day.by_channel.map(function (r) {
        return [[r.bank, ""], [r.channel, ""], num(r.count), money(r.amount), money(r.net)];
      }),
      by_fee_type: day.by_fee_type.map(function (r) {
        return [[r.bank, ""], [r.fee_type || "(prepaid)", ""], num(r.count), money(r.amount),
                money(r.net)];
      }),
      states: f.banks.map(function (s) {
        return [[s.bank, ""], cutoff(s.cutoff), [s.last_closed || "-", ""], recon(s.recon)];
      }),
      invoices: f.invoices.map(function (s) {
        return [[s.holder, ""], num(s.ranges), num(s.remaining), num(s.low_water),
                [s.state, STOCK_CLASS[s.state] || ""]];
      })
    };
  }

  var api = {yuan: yuan, ago: ago, linkCells: linkCells, figureTables: figureTables,
             alertsLine: alertsLine};
  if (typeof module !== "undefined" && module.exports) {  // node, for the tests
    module.exports = api;
    return;
  }

  // -- the page ---------------------------------------------------------------------

  var root = document.getElementById("overview");
  if (!root) return;

  function setCell(td, cell) {
    td.textContent = cell[0];
    td.className = cell[1];
  }

  function say(id, text, cls) {
    var el = document.getElementById(id);
    if (el) {
      el.textContent = text;
      el.className = cls;
    }
  }

  function empty(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function fill(section, rows) {
    var table = section.parentNode;
    var cols = table.tHead ? table.tHead.rows[0].cells.length : 1;
    var fragment = document.createDocumentFragment();
    rows.forEach(function (row) {
      var tr = document.createElement("tr");
      row.forEach(function (cell) {
        var td = document.createElement("td");
        setCell(td, cell);
        tr.appendChild(td);
      });
      fragment.appendChild(tr);
    });
    var none = section.getAttribute("data-empty");
    if (!rows.length && none) {
      var tr = document.createElement("tr");
      var td = document.createElement("td");
      td.colSpan = cols;
      setCell(td, [none, "empty"]);
      tr.appendChild(td);
      fragment.appendChild(tr);
    }
    empty(section);
    section.appendChild(fragment);
  }

  // the bank links: one event a second from the stream
  function showLinks(snapshot) {
    var rows = document.querySelectorAll("#links tbody tr[data-bank]");
    var byName = {};
    snapshot.banks.forEach(function (b) { byName[b.bank] = b; });
    Array.prototype.forEach.call(rows, function (tr) {
      var b = byName[tr.getAttribute("data-bank")];
      if (!b) return;
      var cells = linkCells(b);
      Array.prototype.forEach.call(tr.querySelectorAll("td[data-field]"), function (td) {
        var cell = cells[td.getAttribute("data-field")];
        if (cell) setCell(td, cell);
      });
    });
    var line = document.getElementById("alerts-line");
    if (line && snapshot.alerts) {
      var text = alertsLine(snapshot.alerts);
      line.className = text[1];
      line.querySelector("a").textContent = text[0];
    }
    say("live-state", "Live: " + when(snapshot.at), "state ok");
  }

  var streamUrl = root.getAttribute("data-stream");
  if (streamUrl && window.EventSource) {
    var source = new EventSource(streamUrl);
    source.onmessage = function (event) {
      try {
        showLinks(JSON.parse(event.data));
      } catch (e) {
        say("live-state", "The live figures could not be read: " + e, "message");
      }
    };
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) {
        say("live-state", "The live view stopped (signed out, or the gateway stopped):"
            + " reload the page.", "message");
      } else {
        say("live-state", "Connection to the gateway lost: reconnecting ...", "message");
      }
    };
  }

  // the day's figures: every 10 s, one request at a time, not while the tab is hidden
  var figuresUrl = root.getAttribute("data-figures");
  var stopped = false;

  function showFigures(f) {
    var tables = figureTables(f);
    Array.prototype.forEach.call(root.querySelectorAll("[data-table]"), function (section) {
      var rows = tables[section.getAttribute("data-table")];
      if (rows) fill(section, rows);
    });
    Array.prototype.forEach.call(root.querySelectorAll("[data-value=date]"), function (el) {
      el.textContent = f.date;
    });
    say("figures-state", "Counted by the database; updated every 10 s (last "
        + new Date().toLocaleTimeString() + ").", "state");
  }

  function poll() {
    if (stopped) return;
    if (document.hidden) {
      window.setTimeout(poll, POLL_MS);
      return;
    }
    fetch(figuresUrl, {credentials: "same-origin", cache: "no-store",
                       headers: {"Accept": "application/json"}})
      .then(function (response) {
        if (response.status === 401) {
          stopped = true;
          say("figures-state", "Your session has ended: reload the page to sign in again.",
              "message");
          return null;
        }
        return response.json().then(function (body) {
          if (!response.ok) {
            var why = body && body.error
              ? body.error.charAt(0).toUpperCase() + body.error.slice(1)
              : "The figures could not be read";
            say("figures-state", why + ": the figures shown are older.", "message");
            return;
          }
          showFigures(body);
        });
      })
      .catch(function () {
        say("figures-state", "The gateway does not answer: the figures shown are older.",
            "message");
      })
      .then(function () {
        if (!stopped) window.setTimeout(poll, POLL_MS);
      });
  }

  if (figuresUrl && window.fetch) window.setTimeout(poll, POLL_MS);
})();
