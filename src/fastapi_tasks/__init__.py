"""Background work for FastAPI endpoints with precise timing.

``tasks.schedule()`` starts work now, ``tasks.after_route.schedule()`` after the
endpoint returned (handed over just before the response starts), and
``tasks.after_response.schedule()`` once the response's last byte was sent.
"""

from ._config import TaskConfig as TaskConfig
from ._dependency import Tasks as Tasks
from ._events import TaskEvent as TaskEvent
from ._events import current_task as current_task
from ._lifespan import add_tasks as add_tasks
from ._lifespan import get_task_manager as get_task_manager
from ._logging import configure_logging as configure_logging
from ._manager import Scheduler as Scheduler
from ._manager import TaskManager as TaskManager
from ._manager import TaskStats as TaskStats
from ._request import RequestInfo as RequestInfo
from ._task import Task as Task
from ._task import TaskErrorHandler as TaskErrorHandler
from ._task import TaskMode as TaskMode
from ._task import TaskOptions as TaskOptions
from ._task import TaskState as TaskState
from ._task import WaitReason as WaitReason
from ._version import __version__ as __version__
from .errors import FastAPITasksAlreadyInstalledError as FastAPITasksAlreadyInstalledError
from .errors import FastAPITasksBrokerError as FastAPITasksBrokerError
from .errors import FastAPITasksClosedError as FastAPITasksClosedError
from .errors import FastAPITasksError as FastAPITasksError
from .errors import FastAPITasksJournalError as FastAPITasksJournalError
from .errors import FastAPITasksNotStartedError as FastAPITasksNotStartedError
from .errors import FastAPITasksUninitializedAppError as FastAPITasksUninitializedAppError
from .errors import FastAPITasksWrongLoopError as FastAPITasksWrongLoopError

__all__ = [
    "FastAPITasksAlreadyInstalledError",
    "FastAPITasksBrokerError",
    "FastAPITasksClosedError",
    "FastAPITasksError",
    "FastAPITasksJournalError",
    "FastAPITasksNotStartedError",
    "FastAPITasksUninitializedAppError",
    "FastAPITasksWrongLoopError",
    "RequestInfo",
    "Scheduler",
    "Task",
    "TaskConfig",
    "TaskErrorHandler",
    "TaskEvent",
    "TaskManager",
    "TaskMode",
    "TaskOptions",
    "TaskState",
    "TaskStats",
    "Tasks",
    "WaitReason",
    "add_tasks",
    "configure_logging",
    "current_task",
    "get_task_manager",
]
