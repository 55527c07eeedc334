// A running job's log block (pre.coderd-logs[data-follow]) follows the API's own follow websocket
// (/api/v2/.../logs?follow&after=<last id shown>), authenticated by the admin's session cookie; the
// server checks the Origin. New lines are appended as they come; error lines stand out.
"use strict";
(function () {
  function follow(pre) {
    const url = new URL(pre.dataset.follow, window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const state = pre.parentElement.querySelector(".coderd-logs-state");
    const say = (text) => {
      if (state) state.textContent = text;
    };
    const socket = new WebSocket(url);
    let received = 0;
    socket.onopen = () => say("Following: new lines appear as the job writes them.");
    socket.onmessage = (event) => {
      const line = JSON.parse(event.data);
      // Coder's ProvisionerJobLog names it log_level.
      const level = String(line.log_level || line.level || "info");
      const empty = pre.querySelector(".coderd-log-empty");
      if (empty) empty.remove();
      const span = document.createElement("span");
      span.className = "coderd-log coderd-log-" + level;
      const time = new Date(line.created_at).toISOString().slice(11, 23);
      const stage = line.stage ? "[" + line.stage + "] " : "";
      span.textContent = time + " " + level.toUpperCase().padEnd(5) + " " + stage + line.output;
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.append(span, "\n");
      if (atBottom) pre.scrollTop = pre.scrollHeight;
      received += 1;
    };
    socket.onclose = (event) => {
      if (event.code === 1000) {
        say("The job has ended (" + received + " new lines): reload the page for its final state.");
      } else {
        say("Not following (the connection closed with code " + event.code + ").");
      }
    };
  }
  function start() {
    document.querySelectorAll("pre.coderd-logs[data-follow]").forEach(follow);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
